"""Greedy answers of the default model through our own forward pass (pasta.llama_forward) vs the Hugging Face
module, on a fixed set of AlpacaEval prompts: the check behind "greedy outputs unchanged" (issue 11). One JSON
line per prompt (both answers, equal or not, where they first differ) and a summary line.

    python scripts/compare_forward.py --limit 12 --max-new-tokens 192 --out results/bench/own_forward_greedy.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pasta.data.sources import alpaca_eval_prompts
from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.runner import ModelRunner


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ours = Interpreter.from_pretrained(None, dtype=a.dtype)
    theirs = Interpreter(ours.model, ours.tokenizer, layout_config=ours.layout_config,
                         decoding_defaults=ours.decoding_defaults)
    theirs.runner = ModelRunner(ours.model, own_forward=False)
    assert ours.runner.own_forward
    limits = DecodeLimits(max_new_tokens=a.max_new_tokens, max_thread_tokens=a.max_new_tokens)
    equal = 0
    with open(a.out, "w", encoding="utf-8") as f:
        for index, prompt in enumerate(alpaca_eval_prompts()[: a.limit]):
            ids = ours.prompt_ids(prompt)
            x = ours.generate(ids, limits=limits).annotated
            y = theirs.generate(ids, limits=limits).annotated
            first = next((i for i, (c, d) in enumerate(zip(x, y)) if c != d), None if x == y else min(len(x), len(y)))
            equal += x == y
            f.write(json.dumps({"index": index, "equal": x == y, "first_difference_char": first,
                                "own_forward": x, "hugging_face": y}) + "\n")
            print(f"[{index + 1}/{a.limit}] equal={x == y}", file=sys.stderr)
        summary = {"summary": True, "prompts": a.limit, "equal": equal, "dtype": a.dtype,
                   "max_new_tokens": a.max_new_tokens}
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
