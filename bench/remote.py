"""The remote path (`--backend openai` through llama.cpp's server) against the local engine, on the same prompts.

    python bench/remote.py --json            # needs .venv-llamacpp (bash scripts/setup.sh --llamacpp)

Both serve the embedded SmolLM2-135M-Instruct GGUF without the Pasta adapter (llama.cpp serves the Q4_1 GGUF as
is, with its quantized kernels; the local engine dequantizes it), greedy, one thread each, one request at a time,
the model's chat template on both sides (`RemoteConfig.tokenizer`). Per prompt: wall time and
completion tokens of each path, ms per token, and the remote path's requests and prompt tokens sent. Then one raw
prompt that ends inside a Pasta program, so the real model goes through the promise/async/sync protocol: how many
requests and how many prompt tokens the remote path re-sends for one answer (its cost model, see
`pasta.backends.openai`). Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROMPTS = ["Give three tips for staying healthy.", "What are the names of some famous actors that started their "
           "careers on Broadway?", "How do I wrap a present neatly?", "Explain what a hash table is."]
FORK_PROMPT = ('Here are two tips:\n1. <promise topic="sleep" tokens="10"/><async>Sleep eight hours.</async>\n'
               '2. <promise topic="water" tokens="10"/><async>Drink water.</async>\n<sync/>\nAnd two more:\n'
               '1. <promise topic="walk" tokens="10"/>')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", help="the local engine's dtype")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from pasta.backends.llamacpp import llama_server
    from pasta.backends.openai import RemoteConfig, RemoteInterpreter
    from pasta.decoding import DecodeLimits
    from pasta.interpreter import Interpreter
    from pasta.models import embedded_gguf_path, resolve_model_path

    torch.set_num_threads(1)
    local = Interpreter.from_pretrained(None, dtype=a.dtype, adapter=False)
    limits = DecodeLimits(max_new_tokens=a.max_new_tokens, max_thread_tokens=a.max_new_tokens)
    local.generate("Hi", limits=DecodeLimits(max_new_tokens=2))  # warm-up
    rows = []
    with llama_server(embedded_gguf_path(), alias="smollm2", threads=1) as url:
        # The model's own chat template for the remote prompts too (else a plain transcript): the same prompt text.
        tokenizer = str(resolve_model_path(None)[1])
        config = RemoteConfig(base_url=url, max_new_tokens=a.max_new_tokens, max_thread_tokens=a.max_new_tokens,
                              tokenizer=tokenizer)
        RemoteInterpreter(RemoteConfig(base_url=url, max_new_tokens=2)).generate("Hi")  # warm-up
        for prompt in PROMPTS:
            t0 = time.perf_counter()
            mine = local.generate(prompt, limits=limits, mode="sequential")
            local_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs = RemoteInterpreter(config).generate(prompt)
            remote_s = time.perf_counter() - t0
            rows.append({
                "prompt": prompt, "local_s": local_s, "local_tokens": mine.stats.tokens,
                "remote_s": remote_s, "remote_tokens": theirs.stats.tokens, "remote_requests": theirs.stats.remote.requests,
                "local_ms_per_token": 1000 * local_s / max(1, mine.stats.tokens),
                "remote_ms_per_token": 1000 * remote_s / max(1, theirs.stats.tokens),
                "same_text": mine.text.strip() == theirs.text.strip(),
            })
        t0 = time.perf_counter()
        fork = RemoteInterpreter(RemoteConfig(base_url=url, max_new_tokens=96, max_thread_tokens=32)).generate(
            FORK_PROMPT, chat=False)
        fork_s = time.perf_counter() - t0
    local_ms = sorted(r["local_ms_per_token"] for r in rows)[len(rows) // 2]
    remote_ms = sorted(r["remote_ms_per_token"] for r in rows)[len(rows) // 2]
    report = {
        "max_new_tokens": a.max_new_tokens, "local_dtype": a.dtype, "threads": 1, "prompts": rows,
        "median_local_ms_per_token": local_ms, "median_remote_ms_per_token": remote_ms,
        "remote_vs_local_time_per_token": remote_ms / local_ms,
        "fork": {"requests": fork.stats.remote.requests, "threads": fork.stats.threads, "completion_tokens": fork.stats.tokens,
                 "prompt_tokens_sent": fork.stats.remote.prompt_tokens, "wall_s": fork_s, "annotated": fork.annotated,
                 "warnings": fork.stats.warnings},
    }
    if a.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        print(f"median ms/token: local engine {local_ms:.1f}, llama.cpp via the remote backend {remote_ms:.1f} "
              f"({report['remote_vs_local_time_per_token']:.2f}x)")
        print(f"forced fork: {fork.stats.remote.requests} requests, {fork.stats.tokens} completion tokens, "
              f"{fork.stats.remote.prompt_tokens} prompt tokens sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
