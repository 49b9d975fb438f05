"""Is whether a fork will need a guard written anywhere in the model's hidden state at the fork?

`scripts/fork_confidence.py` found the shipped model's own probability of starting an outline ("Overview") no better
than chance at telling forks that went well from forks a guard had to correct (AUC 0.46). The LM head is one linear
read-out of the last hidden state; this asks whether *any* linear read-out, of any depth, does better: a logistic
probe on the hidden state at the position that writes "Overview", cross-validated.

Labelled forks of the shipped model (r17), on ShareGPT prompts (never AlpacaEval):
- `bad`: prompts where the outline guard stepped in (the `outline_repeat` and `outline_done` correction pairs of
  r21, `results/candidates/r21-pref-corrections/pairs-r17-all.jsonl`);
- `good`: r17's own clean forks (r25's on-policy data, kept only when no guard touched the answer);
a prompt in both (different decodings went different ways) is left out. A high held-out AUC would mean the model
knows, before it writes the outline, that it will repeat itself - so training (or a learned fork gate) could use it;
an AUC near 0.5 at every depth means the information is not there to learn, at this size.

    python scripts/fork_probe.py --out results/ablation/fork_probe_r17.json
    python scripts/fork_probe.py --at separator --out results/ablation/separator_probe_r17.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from pasta.interpreter import Interpreter
from pasta.lang import OUTLINE_PREFIX

PAIRS = "results/candidates/r21-pref-corrections/pairs-r17-all.jsonl"
CLEAN = "results/candidates/r25-unlikelihood/data/sft-onpolicy-r17p.jsonl"
GUARD_KINDS = ("outline_repeat", "outline_done")


def labelled_separators() -> list[tuple[str, str, int]]:
    """(prompt, the answer through an outline item, 1 if the model's next item repeated an earlier one, 0 if a clean
    answer of its own went on with a new item there): the places of `scripts/outline_end_probs.py`."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from outline_end_probs import decision_places

    places = decision_places("dot")
    rows = [(p, a, 1) for p, a in places["repeat"]] + [(p, a, 0) for p, a in places["continue"]]
    # No repeat follows the first item in these answers: places after it would let a probe score by position alone.
    return [row for row in rows if items_so_far(row[1]) >= 2]


def items_so_far(answer: str) -> int:
    return answer[answer.rfind(OUTLINE_PREFIX) + len(OUTLINE_PREFIX):].count(";") + 1


def labelled_forks() -> list[tuple[str, str, int]]:
    """(prompt, the answer through "Overview:", 1 if a guard stepped in later)."""
    bad: dict[str, str] = {}
    for line in open(PAIRS, encoding="utf-8"):
        pair = json.loads(line)
        at = pair["rejected"].find(OUTLINE_PREFIX)
        if pair["kind"] in GUARD_KINDS and at >= 0:
            bad.setdefault(pair["prompt"], pair["rejected"][: at + len(OUTLINE_PREFIX)])
    good: dict[str, str] = {}
    for line in open(CLEAN, encoding="utf-8"):
        row = json.loads(line)
        at = row["annotated"].find(OUTLINE_PREFIX)
        if at >= 0 and "<promise" in row["annotated"][at:]:
            good.setdefault(row["prompt"], row["annotated"][: at + len(OUTLINE_PREFIX)])
    both = bad.keys() & good.keys()
    return ([(p, a, 1) for p, a in bad.items() if p not in both]
            + [(p, a, 0) for p, a in good.items() if p not in both])


def auc(scores: list[float], labels: list[int]) -> float:
    """P(a random bad fork scores above a random good one); ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / max(1, len(pos) * len(neg))


def probe_auc(x: torch.Tensor, y: torch.Tensor, groups: list[str], folds: int, repeats: int, l2: float,
              scores_out: list | None = None) -> float:
    """Held-out AUC of an L2 logistic regression (standardized features), k-fold over groups (a prompt's places stay
    in one fold), repeated with reshuffled folds."""
    aucs = []
    for seed in range(repeats):
        rng = random.Random(seed)
        names = sorted(set(groups))
        rng.shuffle(names)
        fold_of_group = {name: k % folds for k, name in enumerate(names)}
        fold_of = [fold_of_group[g] for g in groups]
        scores = [0.0] * len(y)
        for fold in range(folds):
            train = [i for i in range(len(y)) if fold_of[i] != fold]
            test = [i for i in range(len(y)) if fold_of[i] == fold]
            mean, std = x[train].mean(0), x[train].std(0) + 1e-6
            xt = (x[train] - mean) / std
            w = torch.zeros(x.shape[1], requires_grad=True)
            b = torch.zeros(1, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200)

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, y[train].float())
                loss = loss + l2 * (w * w).sum()
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                out = ((x[test] - mean) / std) @ w + b
            for i, s in zip(test, out.tolist()):
                scores[i] = s
        aucs.append(auc(scores, y.tolist()))
        if scores_out is not None:
            scores_out.append(scores)
    return sum(aucs) / len(aucs)


def flagged_good_at(scores: list[float], labels: list[int], caught: float) -> float:
    """The share of good places a threshold flags when it flags `caught` of the bad ones (held-out scores)."""
    bad = sorted((s for s, y in zip(scores, labels) if y), reverse=True)
    threshold = bad[max(0, round(caught * len(bad)) - 1)]
    good = [s for s, y in zip(scores, labels) if not y]
    return sum(s >= threshold for s in good) / len(good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--at", choices=["fork", "separator"], default="fork",
                        help="fork: the state that writes 'Overview' (bad: a guard stepped in later); separator: the "
                             "state after an outline item (bad: the next item repeats an earlier one)")
    parser.add_argument("--layers", default="0,4,8,12,16,20,24,28,30", help="hidden-state depths to probe")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--l2", default="0.01,0.1,1", help="L2 strengths to try (each reported)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    interp = Interpreter.from_pretrained(adapter=True, dtype="float32")
    tok, model = interp.tokenizer, interp.model
    overview = tok.encode(OUTLINE_PREFIX.split(":")[0], add_special_tokens=False)[0]
    layers = [int(v) for v in args.layers.split(",")]
    forks = labelled_forks() if args.at == "fork" else labelled_separators()
    features: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    p_overview, labels = [], []
    for n, (prompt, answer, label) in enumerate(forks, 1):
        text_ids = tok.encode(answer, add_special_tokens=False)  # as fork_confidence.py: with the word that follows
        if args.at == "fork":
            text_ids = text_ids[: max(k for k, t in enumerate(text_ids) if t == overview)]
        ids = interp.prompt_ids(prompt) + text_ids
        with torch.inference_mode():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        for layer in layers:
            features[layer].append(out.hidden_states[layer][0, -1].float())
        p_overview.append(torch.softmax(out.logits[0, -1].float(), -1)[overview].item())
        labels.append(label)
        if n % 25 == 0:
            print(f"{n}/{len(forks)}", flush=True)
    y = torch.tensor(labels)
    groups = [prompt for prompt, _, _ in forks]
    result = {"at": args.at, "places": len(forks), "prompts": len(set(groups)), "bad": int(y.sum()),
              "good": int(len(y) - y.sum()), "probe_auc": {}}
    if args.at == "fork":  # a low p(Overview) should mean trouble: score = 1 - p, so AUC > 0.5 is better than chance
        result["auc_p_overview"] = round(auc([1 - p for p in p_overview], labels), 4)
    else:  # what position alone gives: repeats come late in an outline
        result["auc_items_so_far"] = round(auc([items_so_far(a) for _, a, _ in forks], labels), 4)
    for l2 in (float(v) for v in args.l2.split(",")):
        result["probe_auc"][str(l2)] = {str(layer): round(probe_auc(torch.stack(features[layer]), y, groups,
                                                                    args.folds, args.repeats, l2), 4)
                                        for layer in layers}
    # the best probe again on shuffled labels: what a probe of this size reaches by chance on these places
    l2, layer = max(((l2, layer) for l2, row in result["probe_auc"].items() for layer in row),
                    key=lambda key: result["probe_auc"][key[0]][key[1]])
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    held_out: list[list[float]] = []
    probe_auc(torch.stack(features[int(layer)]), y, groups, args.folds, args.repeats, float(l2), held_out)
    result["best"] = {"l2": l2, "layer": layer, "auc": result["probe_auc"][l2][layer],
                      # a gate on this probe: the good places it also stops when it stops half / two thirds of the bad
                      "good_flagged_at_half_of_bad": round(sum(flagged_good_at(s, labels, 0.5) for s in held_out)
                                                           / len(held_out), 3),
                      "good_flagged_at_two_thirds_of_bad": round(sum(flagged_good_at(s, labels, 2 / 3)
                                                                     for s in held_out) / len(held_out), 3),
                      "shuffled_label_auc": round(probe_auc(torch.stack(features[int(layer)]), shuffled, groups,
                                                            args.folds, args.repeats, float(l2)), 4)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
