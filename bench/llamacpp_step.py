"""Decode-step time of llama.cpp itself (llama-cpp-python, in its own venv), for side-by-side comparison.

    .venv-llamacpp/bin/python bench/llamacpp_step.py MODEL.gguf --prompt-ids 1,2,3 --new-tokens 96 --threads 1

Feeds the same prompt token ids, then greedy-decodes `new-tokens` tokens one step at a time with the library's own
sampler, and prints one JSON line (the fastest of `repeats` runs after a warm-up): prefill seconds (to the first
token), decode seconds (the other tokens), tokens, ms per decode step, and the greedy token ids. Runs with no
`pasta` import (the llama.cpp venv has only llama-cpp-python).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("gguf")
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    from llama_cpp import Llama

    ids = [int(t) for t in a.prompt_ids.split(",")]
    llm = Llama(model_path=a.gguf, n_ctx=len(ids) + a.new_tokens + 8, n_threads=a.threads, n_threads_batch=a.threads,
                verbose=False)
    best = None
    for repeat in range(a.repeats + 1):  # the first run warms up
        llm.reset()
        t0 = time.perf_counter()
        first = None
        n = 0
        tokens = []
        for token in llm.generate(ids, temp=0.0, reset=True):
            n += 1
            tokens.append(int(token))
            if first is None:
                first = time.perf_counter()  # prefill + the first token
            if n >= a.new_tokens:
                break
        end = time.perf_counter()
        run = {"prefill_s": first - t0, "decode_s": end - first, "tokens": n,
               "ms_per_step": 1000 * (end - first) / max(1, n - 1), "token_ids": tokens}
        if repeat and (best is None or run["ms_per_step"] < best["ms_per_step"]):
            best = run
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
