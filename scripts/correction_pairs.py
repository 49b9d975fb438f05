"""Preference pairs from guard corrections (pasta.data.correction_pairs): for every on-policy answer whose outline a
guard corrected, the corrected answer (chosen) against the model's own continuation at the guard (rejected, cut off).
Train on them with `pasta train pref --pairs OUT`.

    python scripts/correction_pairs.py data/onpolicy-r17.jsonl data/sampled-r17.jsonl --drop-evasive --out data/pairs-r17.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from pasta.data.correction_pairs import correction_pairs
from pasta.data.onpolicy import OnPolicyConfig
from pasta.jsonl import jsonl_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("answers", nargs="+", help="on-policy answer rows (scripts/onpolicy_distill.py --out)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--drop-evasive", action="store_true", help="no pair whose corrected answer declines")
    parser.add_argument("--min-chunks", type=int, default=2, help="chunks the corrected answer needs")
    parser.add_argument("--cut-chosen", action="store_true",
                        help="cut the chosen side at the end of the line where the two sides part, so the "
                             "preference falls on that decision alone")
    parser.add_argument("--kinds", default="outline_repeat,outline_done,one_item",
                        help="comma-separated pair kinds to write (default: all)")
    args = parser.parse_args(argv)
    wanted = {k.strip() for k in args.kinds.split(",") if k.strip()}
    unknown = wanted - {"outline_repeat", "outline_done", "one_item"}
    if unknown:
        parser.error(f"--kinds: unknown kind(s) {', '.join(sorted(unknown))}")
    config = OnPolicyConfig(keep_guarded=True, drop_evasive=args.drop_evasive, min_chunks=args.min_chunks)
    reasons: Counter = Counter()
    kinds: Counter = Counter()
    rows_out = []
    seen = set()
    for path in args.answers:
        for line_no, row in jsonl_lines(path):
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("prompt"), str):
                reasons["unreadable row"] += 1
                print(f"{path}:{line_no}: not an answer row; skipped", file=sys.stderr)
                continue
            pairs, why = correction_pairs(row, config)
            reasons[why or "paired"] += 1
            for pair in pairs:
                if pair.id in seen or pair.kind not in wanted:
                    continue
                seen.add(pair.id)
                pair = pair.cut() if args.cut_chosen else pair
                kinds[pair.kind] += 1
                rows_out.append(pair.to_row())
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_out)
    print(json.dumps({"pairs": len(rows_out), "kinds": dict(kinds), "answers": dict(reasons.most_common())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
