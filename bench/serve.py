"""Load test of `pasta serve`: cross-request batching against the same server handling one request at a time.

    python bench/serve.py --clients 8 --requests 16 --max-tokens 48 --json

Starts `python -m pasta.serve` on a free loopback port twice (--max-batch CLIENTS, then --max-batch 1), runs the
same N concurrent streaming clients against each, and reports requests/s, tokens/s, p50/p95 latency and whether
every response was complete (200, streamed to `[DONE]`, a finish reason, usage, text equal to the non-streamed
reference's length in tokens). Bounded: at most --requests requests per server and --time-limit seconds overall.
Greedy decoding, so the two servers' texts are also compared (`same_text_ratio`; float32 makes them identical).

    python bench/serve.py --hol --long-prompt-tokens 4000 --json

Head-of-line blocking instead: a streaming request with a long prompt (token ids), then 0.5 s later a short one;
reports the short request's time to first token with chunked prefill (`--prefill-chunk`, default 128) and without
(0), side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pasta.subprocesses import free_port, stop

PROMPTS = [
    "Give three tips for staying healthy.",
    "Explain what a hash table is.",
    "Write a short poem about the sea.",
    "What are the benefits of reading books?",
    "Describe how photosynthesis works.",
    "List some good habits for programmers.",
    "Why is the sky blue?",
    "Suggest a plan for a weekend trip.",
]


def start_server(args, max_batch: int, port: int, extra: list[str] = ()) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pasta.serve", "--host", "127.0.0.1", "--port", str(port), "--max-batch",
           str(max_batch), "--max-queue", str(args.clients * 2), "--threads", str(args.threads), "--dtype", args.dtype,
           "--max-tokens-limit", str(max(args.max_tokens, 16))]
    cmd += list(extra)
    if args.model:
        cmd += ["--model", args.model]
    if not args.adapter:
        cmd += ["--no-adapter"]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, url: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            return httpx.get(f"{url}/v1/models", timeout=2).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.5)
    raise TimeoutError("server did not become ready in time")


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0}
    started = time.perf_counter()
    first = None
    text, finish, usage, done, status = [], None, None, False, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                break
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content")
            if piece:
                first = first or time.perf_counter()
                text.append(piece)
            finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    complete = status == 200 and done and finish in ("stop", "length") and usage is not None \
        and usage["completion_tokens"] > 0 and (finish == "stop" or usage["completion_tokens"] == max_tokens)
    return {"prompt": prompt, "text": "".join(text), "latency_s": end - started,
            "ttft_s": (first or end) - started, "tokens": usage["completion_tokens"] if usage else 0,
            "complete": bool(complete)}


async def load(url: str, model: str, args, deadline: float) -> dict:
    queue = list(range(args.requests))
    results: list[dict] = []

    async def worker(client):
        while queue and time.monotonic() < deadline:
            i = queue.pop(0)
            results.append({"i": i, **await one_request(client, model, PROMPTS[i % len(PROMPTS)], args.max_tokens)})

    limits = httpx.Limits(max_connections=args.clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=args.time_limit, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(args.clients)])
        wall = time.perf_counter() - started
    latencies = sorted(r["latency_s"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall, "tokens_per_s": tokens / wall,
        "p50_latency_s": statistics.median(latencies) if latencies else None,
        "p95_latency_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
        "p50_ttft_s": statistics.median(sorted(r["ttft_s"] for r in results)) if results else None,
        "all_complete": len(results) == args.requests and all(r["complete"] for r in results),
        "texts": {r["i"]: r["text"] for r in results},
    }


@contextlib.contextmanager
def running_server(args, max_batch: int, deadline: float, extra: list[str] = ()):
    """A warmed-up server on a free loopback port: yields (url, model name); stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, max_batch, port, extra)
    try:
        model = wait_ready(proc, url, deadline)
        asyncio.run(one_request_warmup(url, model))
        yield url, model
    finally:
        stop(proc)


def run_mode(args, max_batch: int, deadline: float) -> dict:
    with running_server(args, max_batch, deadline) as (url, model):
        return asyncio.run(load(url, model, args, deadline))


async def head_of_line(url: str, model: str, args) -> dict:
    """TTFT of a short request sent 0.5 s after a long prompt started prefilling."""
    long_ids = [100 + (i * 37) % 1000 for i in range(args.long_prompt_tokens)]

    async def stream(client, body) -> dict:
        started = time.perf_counter()
        first = None
        async with client.stream("POST", "/v1/completions", json={**body, "model": model, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text"):
                    first = first or time.perf_counter()
        return {"ttft_s": (first or time.perf_counter()) - started, "latency_s": time.perf_counter() - started}

    async with httpx.AsyncClient(base_url=url, timeout=args.time_limit) as client:
        long_task = asyncio.create_task(stream(client, {"prompt": long_ids, "max_tokens": 4, "temperature": 0}))
        await asyncio.sleep(0.5)
        short = await stream(client, {"prompt": "Hello, how are", "max_tokens": 4, "temperature": 0})
        long = await long_task
    return {"short_ttft_s": short["ttft_s"], "long_latency_s": long["latency_s"]}


def run_hol(args, prefill_chunk: int, deadline: float) -> dict:
    with running_server(args, 8, deadline, ["--prefill-chunk", str(prefill_chunk)]) as (url, model):
        return asyncio.run(head_of_line(url, model, args))


async def one_request_warmup(url: str, model: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await one_request(client, model, "Hi", 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--adapter", action="store_true", help="apply the default Pasta adapter (default: base model)")
    p.add_argument("--dtype", default="float32", help="float32 (default: fastest on most CPUs, exact comparisons) | bfloat16")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=16, help="requests per server")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (1: robust on a shared machine)")
    p.add_argument("--time-limit", type=float, default=900, help="seconds for the whole benchmark")
    p.add_argument("--json", action="store_true")
    p.add_argument("--hol", action="store_true", help="measure head-of-line blocking under a long prefill instead")
    p.add_argument("--long-prompt-tokens", type=int, default=4000)
    p.add_argument("--prefill-chunk", type=int, default=128)
    args = p.parse_args(argv)
    if min(args.clients, args.requests, args.max_tokens, args.threads) < 1:
        p.error("--clients, --requests, --max-tokens and --threads must be >= 1")
    deadline = time.monotonic() + args.time_limit
    if args.hol:
        chunked = run_hol(args, args.prefill_chunk, deadline)
        unchunked = run_hol(args, 0, deadline)
        report = {"long_prompt_tokens": args.long_prompt_tokens, "prefill_chunk": args.prefill_chunk,
                  "threads": args.threads, "dtype": args.dtype, "chunked": chunked, "unchunked": unchunked,
                  "short_ttft_ratio": unchunked["short_ttft_s"] / max(chunked["short_ttft_s"], 1e-9)}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"short request sent 0.5 s into a {args.long_prompt_tokens}-token prefill: time to first token "
                  f"{chunked['short_ttft_s']:.2f}s with --prefill-chunk {args.prefill_chunk}, "
                  f"{unchunked['short_ttft_s']:.2f}s without")
        return 0
    batched = run_mode(args, args.clients, deadline)
    single = run_mode(args, 1, deadline)
    same = [batched["texts"].get(i) == t for i, t in single["texts"].items() if i in batched["texts"]]
    report = {
        "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens, "dtype": args.dtype,
        "threads": args.threads,
        "batched": {k: v for k, v in batched.items() if k != "texts"},
        "one_at_a_time": {k: v for k, v in single.items() if k != "texts"},
        "throughput_ratio": batched["tokens_per_s"] / max(single["tokens_per_s"], 1e-9),
        "requests_ratio": batched["requests_per_s"] / max(single["requests_per_s"], 1e-9),
        "p95_latency_s": batched["p95_latency_s"],
        "all_complete": batched["all_complete"] and single["all_complete"],
        "same_text_ratio": sum(same) / max(1, len(same)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        b, s = report["batched"], report["one_at_a_time"]
        print(f"{args.clients} clients, {args.requests} requests x {args.max_tokens} tokens ({args.dtype}, {args.threads} thread)")
        for name, r in (("batched", b), ("one at a time", s)):
            print(f"  {name:14s} {r['requests_per_s']:.2f} req/s  {r['tokens_per_s']:.1f} tok/s  "
                  f"p50 {r['p50_latency_s']:.2f}s  p95 {r['p95_latency_s']:.2f}s  complete={r['all_complete']}")
        print(f"  throughput ratio {report['throughput_ratio']:.2f}x, same text {report['same_text_ratio']:.0%}")
    return 0 if report["all_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
