"""The Stage-1 ablation behind docs/training.md: what makes the default model loop, and what fixes it.

Each run fine-tunes SmolLM2-135M-Instruct (resumable, 1 CPU thread) and is measured on the development set,
AlpacaEval instructions 100-139 (never trained on; the README's figures use 0-99), by asynchronous decoding only,
greedy, 512 tokens: the structure of the answers (complete, promises, sync, repeated topics, guards) is what the
ablation is about; wall-clock speed is measured on the final model only.

    python scripts/ablation.py --run r1-sharegpt-v2      # train (or resume) and evaluate one run
    python scripts/ablation.py --table                   # the Markdown table from the committed summaries

Data files come from `pasta annotate` / `pasta distill` (see scripts/build_default_model.sh):
data/sft-sharegpt-v1.jsonl, data/sft-sharegpt-v2.jsonl, data/sft-distill-v2.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "ablation"
PY = sys.executable
COMMON = ["--batch-size", "4", "--lr", "5e-4", "--save-steps", "20", "--threads", "1", "--bf16", "--resume"]

# name -> (what it changes, data files, extra `pasta train sft` arguments). r0 is the first default model.
RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    "r0-first-default": ("the first default model: ShareGPT, annotator v1, 120 steps", [], []),
    "r1-sharegpt-v2": ("annotator v2 (<= 6 chunks, markers in main, distinct topics), else as r0",
                       ["data/sft-sharegpt-v2.jsonl"],
                       ["--max-steps", "120", "--max-length", "448", "--max-examples", "1200"]),
    "r2-distill-v2": ("self-distilled answers (the base model's own), annotator v2, 120 steps",
                      ["data/sft-distill-v2.jsonl"],
                      ["--max-steps", "120", "--max-length", "512", "--max-examples", "1200"]),
    "r3-distill-v2-long": ("r2 trained 3x longer (360 steps)",
                           ["data/sft-distill-v2.jsonl"],
                           ["--max-steps", "360", "--max-length", "512", "--max-examples", "1200"]),
    "r4-distill-v2-plain50": ("r2 with 50% plain examples (r2: 20%)",
                              ["data/sft-distill-v2.jsonl"],
                              ["--max-steps", "120", "--max-length", "512", "--max-examples", "1200",
                               "--annotated-fraction", "0.5"]),
    "r5-distill-v2-reserve10": ("r2 with 10x reservation (r2: 2x)",
                                ["data/sft-distill-v2.jsonl"],
                                ["--max-steps", "120", "--max-length", "512", "--max-examples", "1200",
                                 "--reserve-factor", "10"]),
    "r6-distill-v2-fixed": ("r2 with a fixed reservation of 64 positions per chunk",
                            ["data/sft-distill-v2.jsonl"],
                            ["--max-steps", "120", "--max-length", "512", "--max-examples", "1200",
                             "--fixed-reserve", "64"]),
    "r7-distill-v1": ("self-distilled answers with annotator v1 (a chunk per item), 120 steps",
                      ["data/sft-distill-v1.jsonl"],
                      ["--max-steps", "120", "--max-length", "512", "--max-examples", "1200"]),
}
DEV = ["--offset", "100", "--limit", "40", "--max-new-tokens", "512", "--no-sequential", "--no-original"]


def run(name: str) -> None:
    what, data, extra = RUNS[name]
    out = ROOT / "runs" / "abl" / name
    if data:
        subprocess.run([PY, "-m", "pasta.cli", "train", "sft", "--data", *data, "--out", str(out), *COMMON, *extra],
                       check=True, cwd=ROOT)
    adapter = [] if name.startswith("r0") else ["--adapter", str(out)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([PY, "bench/default_model.py", *DEV, *adapter, "--out", str(RESULTS / f"{name}.jsonl"),
                    "--summary", str(RESULTS / f"{name}.summary.json"), "--json"], check=True, cwd=ROOT)


def _f(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table() -> str:
    lines = ["| run | what changes | complete | uses promise | promises / answer | reaches sync | repeated topics "
             "| duplicate chunks | guards fired | theoretical speedup (complete / complete promise-using) | repetition |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (what, _, _) in RUNS.items():
        path = RESULTS / f"{name}.summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        p = s["promise_answers"]
        lines.append(
            f"| {name} | {what} | {_f(s['complete'])} | {_f(s['uses_promise'])} | {_f(p['mean_promises'], 1)} | "
            f"{_f(p['reaches_sync'])} | {_f(p['repeated_topics_share'])} | {_f(p['duplicate_chunks_share'])} | "
            f"{_f(p['guards_fired'])} | {_f(s['speedup']['theoretical_geomean_complete'])} / "
            f"{_f(s['speedup']['theoretical_geomean_complete_promise'])} | "
            f"{_f(s['repetition']['pasta_mean'], 3)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=sorted(RUNS), action="append", default=[])
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    for name in args.run:
        run(name)
    if args.table:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
