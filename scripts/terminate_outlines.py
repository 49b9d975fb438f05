"""Rewrite a JSONL of training answers or correction pairs with terminated outlines (`pasta.lang.terminated_outlines`:
"Overview: Diet; Sleep." -> "Overview: Diet; Sleep;"), every other field and row unchanged.

    python scripts/terminate_outlines.py data/sft-onpolicy-r17p.jsonl data/sft-onpolicy-r17p-terminated.jsonl
"""

from __future__ import annotations

import argparse
import json

from pasta.lang import terminated_outlines

FIELDS = ("annotated", "chosen", "rejected")  # answers (SFT rows) and both sides of a pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("out")
    args = parser.parse_args()
    rows = changed = 0
    with open(args.source, encoding="utf-8") as src, open(args.out, "w", encoding="utf-8") as out:
        for line in src:
            if not line.strip():
                continue
            row = json.loads(line)
            before = dict(row)
            for field in FIELDS:
                if isinstance(row.get(field), str):
                    row[field] = terminated_outlines(row[field])
            rows += 1
            changed += row != before
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{args.out}: {rows} rows, {changed} with an outline rewritten")


if __name__ == "__main__":
    main()
