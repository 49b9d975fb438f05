"""The embedded default Pasta model on the AlpacaEval instructions: does it write Pasta-Lang, and is it faster?

Per prompt the same model answers twice in the same run: asynchronous decoding, and sequential decoding of the
same annotations (the same answer token for token under greedy decoding). Prints JSON with:
- well_formed: fraction of answers whose annotations are valid or were recovered without loss
- uses_promise: fraction with at least one promise
- theoretical_speedup_geomean: geometric mean of tokens / steps of asynchronous decoding
- wall_speedup_geomean: geometric mean of wall(sequential) / wall(async)
- truncated: fraction of answers that reached --max-new-tokens

    python bench/default_model.py --json --limit 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from pasta.data.sources import alpaca_eval_prompts
from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.lang import is_valid

_RECOVERABLE = ("ignored", "unusable tokens")


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded model with its Pasta adapter")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N of the 805 instructions")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared CPU)")
    parser.add_argument("--out", default=None, help="per-prompt JSONL (appended; a rerun skips done prompts)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    interp = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=args.adapter or True)
    limits = DecodeLimits(max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_new_tokens)
    prompts = alpaca_eval_prompts()[args.offset:]
    if args.limit:
        prompts = prompts[: args.limit]
    done: dict[str, dict] = {}
    if args.out and Path(args.out).is_file():
        for line in Path(args.out).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["instruction"]] = row
    sink = open(args.out, "a") if args.out else None
    rows = []
    for i, prompt in enumerate(prompts):
        if prompt in done:
            rows.append(done[prompt])
            continue
        ids = interp.prompt_ids(prompt)
        started = time.perf_counter()
        parallel = interp.generate(ids, limits=limits)
        wall_async = time.perf_counter() - started
        started = time.perf_counter()
        sequential = interp.generate(ids, limits=limits, mode="sequential")
        wall_seq = time.perf_counter() - started
        valid = is_valid(parallel.annotated)
        recovered = all(any(k in w for k in _RECOVERABLE) for w in parallel.stats.warnings)
        row = {
            "instruction": prompt, "annotated": parallel.annotated, "output": parallel.text,
            "same_as_sequential": sequential.text == parallel.text, "valid": valid,
            "well_formed": valid or recovered, "promises": parallel.stats.threads, "tokens": parallel.stats.tokens,
            "steps": parallel.stats.steps, "theoretical_speedup": parallel.stats.theoretical_speedup,
            "wall_async_s": wall_async, "wall_sequential_s": wall_seq, "wall_speedup": wall_seq / wall_async,
            "warnings": parallel.stats.warnings,
        }
        rows.append(row)
        if sink:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
        print(f"[{i + 1}/{len(prompts)}] promises={row['promises']} theo={row['theoretical_speedup']:.2f} "
              f"wall={row['wall_speedup']:.2f}", file=sys.stderr)
    n = len(rows)
    summary = {
        "model": interp.name, "prompts": n, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
        "well_formed": sum(r["well_formed"] for r in rows) / n,
        "valid": sum(r["valid"] for r in rows) / n,
        "uses_promise": sum(r["promises"] > 0 for r in rows) / n,
        "theoretical_speedup_geomean": geomean([r["theoretical_speedup"] for r in rows]),
        "wall_speedup_geomean": geomean([r["wall_speedup"] for r in rows]),
        "same_text_async_vs_sequential": sum(r["same_as_sequential"] for r in rows) / n,
        "mean_tokens": sum(r["tokens"] for r in rows) / n,
        # Answers that hit --max-new-tokens (the interpreter closes them cleanly; the text is cut, not lost).
        "truncated": sum(any("max_new_tokens" in w for w in r["warnings"]) for r in rows) / n,
    }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
