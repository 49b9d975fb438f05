"""How well a model's own probabilities tell where an outline should end: at each decision after an outline item,
the probability the model gives to ending there, teacher-forced, in three kinds of place:

- `repeat`: where the model went on and named an earlier item again (r17's outline_repeat correction pairs: the
  answer up to the last distinct item);
- `continue`: where a clean answer of the model's own goes on with a new item;
- `end`: where a clean answer ends its outline.

'.'-ended outlines (`--form dot`) decide at the separator: p(end) = p('.') / (p('.') + p(';')). Terminated ones
(`--form terminated`, `pasta.lang.terminated_outlines`) decide at the next item's first token: p(end) = p(a token
that starts with a newline). A model that can tell `repeat` from `continue` gives them different p(end); the AUC
printed is the chance that a `repeat` place gets a higher p(end) than a `continue` one (0.5: no better than chance).

    python scripts/outline_end_probs.py --adapter runs/abl/r17-shipped-adapter --form dot \\
        --out results/ablation/outline_end_probs/r17-dot.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from pasta.lang import OUTLINE_PREFIX, terminated_outlines
from pasta.models import load_model
from pasta.train.sft import chat_prompt_ids

PAIRS = "results/candidates/r21-pref-corrections/pairs-r17-all.jsonl"
CLEAN = "results/candidates/r25-unlikelihood/data/sft-onpolicy-r17p.jsonl"


def decision_places(form: str) -> dict[str, list[tuple[str, str]]]:
    """{kind: [(prompt, answer prefix that ends just before the decision)]}."""
    places: dict[str, list[tuple[str, str]]] = {"repeat": [], "continue": [], "end": []}
    after = 1 if form == "terminated" else 0  # terminated: the decision follows the item's ';'
    for line in open(PAIRS, encoding="utf-8"):
        pair = json.loads(line)
        if pair["kind"] != "outline_repeat":
            continue
        rejected = pair["rejected"]  # "...Overview: A; B; B;": cut after "B" (dot) or "B;" (terminated)
        start = rejected.rfind(OUTLINE_PREFIX)
        cut = rejected.rstrip(";").rfind(";")
        if cut > start >= 0 and "<promise" not in rejected[:cut]:
            places["repeat"].append((pair["prompt"], rejected[: cut + after]))
    for line in open(CLEAN, encoding="utf-8"):
        row = json.loads(line)
        answer = terminated_outlines(row["annotated"]) if form == "terminated" else row["annotated"]
        start = answer.find(OUTLINE_PREFIX)
        if start < 0 or "<promise" not in answer[start:] or "<promise" in answer[:start]:
            continue
        end = answer.find("\n", start)
        while end > start and answer[end - 1] in " \t":
            end -= 1
        if answer[end - 1] != (";" if form == "terminated" else "."):
            continue  # a line that does not end in the form's mark ('"E.T."'): no clean end place
        marks = [i for i in range(start + len(OUTLINE_PREFIX), end) if answer[i] in ";."]
        for i in marks:
            last = i == marks[-1]
            if answer[i] == "." and not last:
                continue  # a '.' inside an item ("Dr. Who")
            places["end" if last else "continue"].append((row["prompt"], answer[: i + after]))
    return places


def end_probability(model, tokenizer, prompt: str, prefix: str, form: str, ids_of: dict) -> float:
    ids = chat_prompt_ids(tokenizer, prompt) + tokenizer.encode(prefix, add_special_tokens=False)
    with torch.no_grad():
        p = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
    if form == "terminated":
        return float(p[ids_of["newline"]].sum())
    dot, semi = float(p[ids_of["dot"]].sum()), float(p[ids_of["semi"]].sum())
    return dot / (dot + semi) if dot + semi > 0 else 0.0


def auc(high: list[float], low: list[float]) -> float:
    """P(a draw from `high` > a draw from `low`), ties half."""
    return sum((h > lo) + 0.5 * (h == lo) for h in high for lo in low) / (len(high) * len(low))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--form", choices=["dot", "terminated"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None, dtype="float32", adapter=args.adapter)
    tokenizer = loaded.tokenizer
    vocab = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    ids_of = {"newline": [i for i, t in enumerate(vocab) if t.startswith("\n")],
              "dot": [i for i, t in enumerate(vocab) if t.lstrip().startswith(".")],
              "semi": [i for i, t in enumerate(vocab) if t.lstrip().startswith(";")]}
    probs = {kind: [end_probability(loaded.model, tokenizer, prompt, prefix, args.form, ids_of)
                    for prompt, prefix in places]
             for kind, places in decision_places(args.form).items()}
    summary = {"adapter": args.adapter, "form": args.form,
               **{f"{kind}_n": len(v) for kind, v in probs.items()},
               **{f"{kind}_median_p_end": round(statistics.median(v), 4) for kind, v in probs.items()},
               "auc_repeat_over_continue": round(auc(probs["repeat"], probs["continue"]), 3),
               "auc_end_over_continue": round(auc(probs["end"], probs["continue"]), 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "p_end": probs}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
