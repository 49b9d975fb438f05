"""Interpreter speed, measured side by side in one run (this machine is shared and noisy: ratios, not times).

- seq_vs_hf: wall time of sequential decoding through our engine / Hugging Face `generate` with its KV cache,
  same model, prompt and number of new tokens (target <= 1.0).
- parallel: teacher-forced answers made of k equal independent chunks, k = 2, 4, 8; `theoretical` = tokens /
  steps of asynchronous decoding, `realized` = wall(sequential mode) / wall(async mode) for the same forced
  answer (target realized / theoretical >= 0.7 at k = 4). Tags are tokens too, so these flatter PASTA: the
  user's alternative is a model writing the same plain text with no tags. `theoretical_plain` = (plain-text
  tokens + 1) / steps and `realized_plain` = wall(sequential decoding of the plain text) / wall(async) say what
  the user gains.

    python bench/interpreter.py --json [--model PATH] [--dtype bfloat16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.lang import promise_tag

CHUNK_TEXT = (
    "This point stands on its own: it explains one idea with a short example, a reason why it matters, and a "
    "practical suggestion that a reader can apply today without needing any of the other points at all."
)


def forced_answer(tokenizer, k: int, chunk_tokens: int) -> str:
    ids = tokenizer.encode(CHUNK_TEXT * 4, add_special_tokens=False)[:chunk_tokens]
    body = tokenizer.decode(ids)
    parts = ["Here are the points:\n"]
    for i in range(k):
        parts.append(promise_tag(f"point {i + 1}", chunk_tokens) + f"<async>{i + 1}. {body}\n</async>")
    parts.append("<sync/>In short, all of them help.")
    return "".join(parts)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_seq_vs_hf(interp: Interpreter, prompt: str, new_tokens: int, repeats: int) -> dict:
    ids = interp.prompt_ids(prompt)
    limits = DecodeLimits(max_new_tokens=new_tokens, max_thread_tokens=new_tokens)
    ours = interp.generate(ids, mode="sequential", limits=limits)
    n = ours.stats.tokens  # the model may stop early; HF generates exactly as many
    input_ids = torch.tensor([ids])

    def hf():
        with torch.inference_mode():
            return interp.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=interp.tokenizer.eos_token_id,
            )

    def engine():
        return interp.generate(ids, mode="sequential", limits=DecodeLimits(max_new_tokens=n, max_thread_tokens=n))

    hf()  # warm-up both paths
    hf_times, our_times = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        hf_times.append(timed(hf, 1)[0])
        our_times.append(timed(engine, 1)[0])
    hf_s, our_s = statistics.median(hf_times), statistics.median(our_times)
    return {"tokens": n, "hf_generate_s": hf_s, "engine_sequential_s": our_s, "seq_vs_hf": our_s / hf_s}


def bench_parallel(interp: Interpreter, prompt: str, ks: list[int], chunk_tokens: int, repeats: int) -> list[dict]:
    ids = interp.prompt_ids(prompt)
    rows = []
    for k in ks:
        teacher = forced_answer(interp.tokenizer, k, chunk_tokens)
        limits = DecodeLimits(max_new_tokens=100_000, max_thread_tokens=10_000, max_threads=max(ks))
        run = lambda mode: interp.generate(ids, teacher=teacher, mode=mode, limits=limits)  # noqa: E731
        par = run("async")  # warm-up
        plain = par.text  # the same answer without tags, decoded as a plain model would write it
        plain_run = lambda: interp.generate(ids, teacher=plain, mode="sequential", limits=limits)  # noqa: E731
        seq_times, par_times, plain_times = [], [], []
        for _ in range(repeats):  # interleaved, so all three see the same machine load
            seq_times.append(timed(lambda: run("sequential"), 1)[0])
            t, par = timed(lambda: run("async"), 1)
            par_times.append(t)
            plain_times.append(timed(plain_run, 1)[0])
        realized = statistics.median(seq_times) / statistics.median(par_times)
        realized_plain = statistics.median(plain_times) / statistics.median(par_times)
        theoretical = par.stats.theoretical_speedup
        plain_tokens = len(interp.tokenizer.encode(plain, add_special_tokens=False))
        theoretical_plain = (plain_tokens + 1) / par.stats.steps
        rows.append({
            "k": k, "tokens": par.stats.tokens, "plain_tokens": plain_tokens, "steps": par.stats.steps,
            "theoretical": round(theoretical, 3), "realized": round(realized, 3),
            "efficiency": round(realized / theoretical, 3), "theoretical_plain": round(theoretical_plain, 3),
            "realized_plain": round(realized_plain, 3), "efficiency_plain": round(realized_plain / theoretical_plain, 3),
        })
        print(f"k={k}: theoretical {theoretical:.2f}x realized {realized:.2f}x; on plain tokens: theoretical "
              f"{theoretical_plain:.2f}x realized {realized_plain:.2f}x", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--chunk-tokens", type=int, default=48)
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    interp = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=False)
    prompt = "Write a detailed essay about the history of the printing press and its effects on Europe."
    seq = bench_seq_vs_hf(interp, prompt, args.new_tokens, args.repeats)
    print(f"sequential engine / HF generate: {seq['seq_vs_hf']:.3f}", file=sys.stderr)
    parallel = bench_parallel(interp, prompt, [int(k) for k in args.ks.split(",")], args.chunk_tokens, args.repeats)
    report = {
        "model": interp.name, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
        "seq_vs_hf": round(seq["seq_vs_hf"], 3), "seq_detail": seq, "parallel": parallel,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
