"""Does the model's confidence at the fork decide whether its fork goes well? For every forked answer of an on-policy
run (scripts/onpolicy_distill.py --out), the adapter's probability of writing "Overview" (the outline line that
starts a fork) at the point where it did, against whether a guard later stepped in or the answer ran to the cap.
A high AUC would allow a fork gate (fork only when confident); a result near 0.5 rules it out.

    python scripts/fork_confidence.py data/onpolicy-r17.jsonl results/ablation/fork_confidence_r17.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from pasta.interpreter import Interpreter
from pasta.jsonl import jsonl_lines
from pasta.lang import OUTLINE_PREFIX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    interp = Interpreter.from_pretrained(adapter=True)
    tok, model = interp.tokenizer, interp.model
    overview = tok.encode(OUTLINE_PREFIX.split(":")[0], add_special_tokens=False)[0]
    points = []
    for _, row in jsonl_lines(args.answers):
        if not isinstance(row, dict):
            continue
        stats, annotated = row.get("stats"), row.get("annotated") or ""
        at = annotated.find(OUTLINE_PREFIX)
        if at < 0 or not isinstance(stats, dict):
            continue
        # Encoded with the word that follows, as the model wrote it: alone, a prefix ending in a blank line encodes
        # it as one token where the model wrote two ("\n", "\n") before "Overview".
        text_ids = tok.encode(annotated[: at + len(OUTLINE_PREFIX)], add_special_tokens=False)
        cut = max(k for k, t in enumerate(text_ids) if t == overview)
        ids = interp.prompt_ids(row["prompt"]) + text_ids[:cut]
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        top = torch.topk(logprobs, 2).indices.tolist()
        alternative = top[1] if top[0] == overview else top[0]
        points.append(dict(p=math.exp(logprobs[overview].item()),
                           margin=(logprobs[overview] - logprobs[alternative]).item(),
                           alternative=tok.decode([alternative]), argmax=top[0] == overview,
                           guards=bool(stats.get("guards")), eos=stats.get("finish_reason") == "eos",
                           speedup=stats.get("theoretical_speedup"), promises=stats.get("promises")))
    good = [p for p in points if p["eos"] and not p["guards"]]
    bad = [p for p in points if not (p["eos"] and not p["guards"])]
    auc = {key: sum((g[key] > b[key]) + 0.5 * (g[key] == b[key]) for g in good for b in bad) / max(1, len(good) * len(bad))
           for key in ("p", "margin")}
    summary = {"forked_answers": len(points), "clean": len(good), "guarded_or_truncated": len(bad), "auc": auc}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "points": points}, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
