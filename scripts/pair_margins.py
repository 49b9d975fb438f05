"""Where a preference pair's two sides part (the first label that differs, in the Pasta layout), the probability each
adapter gives the chosen token and the rejected one: did a Stage-2 round move the decision it was trained on?

    python scripts/pair_margins.py data/pairs-r17-all.jsonl --kind one_item \\
        --adapter runs/abl/r17-shipped-adapter --adapter runs/abl/r22-pref-corrections-one-item/round-1/adapter
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import torch

from pasta.models import load_model
from pasta.train.collator import IGNORE, collate, layout_example, token_logprobs
from pasta.train.pref import load_pairs
from pasta.train.sft import chat_prompt_ids


def decision_probs(model, tokenizer, pair: dict, layout_config=None) -> tuple[float, float] | None:
    """(p(chosen token), p(rejected token)) at the first label where the two sides differ; None if they never do."""
    ids = chat_prompt_ids(tokenizer, pair["prompt"])
    sides = [layout_example(tokenizer, ids, pair["chosen"], layout_config, tokenizer.eos_token_id),
             layout_example(tokenizer, ids, pair["rejected"], layout_config, tokenizer.eos_token_id,
                            end_with_eos=not pair.get("rejected_truncated"))]
    labelled = [(s, (s.labels != IGNORE).nonzero().flatten()) for s in sides]
    (c, ci), (r, ri) = labelled
    n = 0
    while n < min(len(ci), len(ri)) and c.labels[ci[n]] == r.labels[ri[n]]:
        n += 1
    if n == min(len(ci), len(ri)):
        return None
    probs = []
    for side, index in ((c, ci[n]), (r, ri[n])):
        with torch.no_grad():
            logp, _ = token_logprobs(model, collate([side]))
        probs.append(float(logp[0, index].exp()))
    return probs[0], probs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs")
    parser.add_argument("--adapter", action="append", required=True, help="adapter folder (repeat to compare)")
    parser.add_argument("--kind", default=None, help="only pairs of this kind")
    parser.add_argument("--sample", type=int, default=25, help="pairs drawn (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = [p for p in load_pairs(args.pairs) if args.kind in (None, p.get("kind"))]
    pairs = random.Random(args.seed).sample(pairs, min(args.sample, len(pairs)))
    report = {"pairs": args.pairs, "kind": args.kind, "n": len(pairs), "adapters": {}}
    for adapter in args.adapter:
        loaded = load_model(None, dtype="float32", adapter=adapter)
        points = [q for q in (decision_probs(loaded.model, loaded.tokenizer, p) for p in pairs) if q]
        report["adapters"][adapter] = {
            "median_p_chosen": statistics.median(a for a, _ in points),
            "median_p_rejected": statistics.median(b for _, b in points),
            "chosen_preferred": sum(a > b for a, b in points) / len(points),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
