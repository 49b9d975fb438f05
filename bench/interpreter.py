"""Interpreter speed, measured side by side in one run (this machine is shared and noisy: ratios, not times).

- seq_vs_hf: wall time of sequential decoding through our engine / Hugging Face `generate` with its KV cache,
  same model, prompt and number of new tokens (target <= 1.0).
- parallel: teacher-forced answers made of k equal independent chunks, k = 2, 4, 8; `theoretical` = tokens /
  steps of asynchronous decoding, `realized` = wall(sequential mode) / wall(async mode) for the same forced
  answer (target realized / theoretical >= 0.7 at k = 4). Tags are tokens too, so these flatter PASTA: the
  user's alternative is a model writing the same plain text with no tags. `theoretical_plain` = (plain-text
  tokens + 1) / steps and `realized_plain` = wall(sequential decoding of the plain text) / wall(async) say what
  the user gains.

- compiled_vs_hf (with --compile): the same with the torch.compile'd engine (`Interpreter(compile=True)`), after
  its compilation (reported as compile_s).
- vs_llamacpp: decode ms per step of llama.cpp (llama-cpp-python from .venv-llamacpp, the embedded GGUF) next to
  our sequential engine's, same prompt ids and threads (target: ours within 1.5x).
- busy_core: sequential decoding while another process spins on one core, / the same idle, for the `auto` thread
  policy (the CLI default), torch's default and 1 thread (target <= 1.5x with the default).

- with --quantize int4: our engine with 4-bit weights (the GGUF's own Q4_1 levels, `pasta.quantized`) in the llama.cpp
  comparison too, and how many greedy tokens it shares with bf16 before the first difference.

    python bench/interpreter.py --json [--model PATH] [--dtype bfloat16] [--repeats 3] [--threads 1|auto|torch]
                                [--quantize int4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from pasta.cli_options import add_quantize_option, add_threads_option, apply_threads
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


def bench_seq_vs_hf(interp: Interpreter, prompt: str, new_tokens: int, repeats: int,
                    compiled: Interpreter | None = None) -> dict:
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

    def engine_compiled():
        return compiled.generate(ids, mode="sequential", limits=DecodeLimits(max_new_tokens=n, max_thread_tokens=n))

    hf()  # warm-up both paths
    out = {"tokens": n}
    if compiled is not None:  # the first compiled run pays the compilation
        out["compile_s"] = timed(engine_compiled, 1)[0]
    hf_times, our_times, compiled_times = [], [], []
    for _ in range(repeats):  # interleaved, so all see the same machine load
        hf_times.append(timed(hf, 1)[0])
        our_times.append(timed(engine, 1)[0])
        if compiled is not None:
            compiled_times.append(timed(engine_compiled, 1)[0])
    hf_s, our_s = statistics.median(hf_times), statistics.median(our_times)
    out.update({"hf_generate_s": hf_s, "engine_sequential_s": our_s, "seq_vs_hf": our_s / hf_s})
    if compiled is not None:
        c = statistics.median(compiled_times)
        out.update({"engine_compiled_s": c, "compiled_vs_hf": c / hf_s,
                    "same_text_compiled": engine().text == engine_compiled().text})
    return out


def _decode_ms_per_step(interp: Interpreter, ids: list[int], n: int) -> tuple[float, list[int]]:
    """Our sequential decode step: (wall of n tokens - wall of 1 token, i.e. the prefill) / (n - 1); and the
    greedy token ids."""
    one = interp.generate(ids, mode="sequential", limits=DecodeLimits(max_new_tokens=1, max_thread_tokens=1))
    full = interp.generate(ids, mode="sequential", limits=DecodeLimits(max_new_tokens=n, max_thread_tokens=n))
    steps = full.stats.tokens - 1
    tokens = interp.tokenizer.encode(full.annotated, add_special_tokens=False)
    return 1000 * (full.stats.wall_s - one.stats.wall_s) / max(1, steps), tokens


def _same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def bench_llamacpp(engines: dict[str, Interpreter], prompt: str, new_tokens: int, repeats: int,
                   model: str | None) -> dict:
    """Decode ms per step: llama.cpp (llama-cpp-python, the embedded GGUF as is: Q4_1 with its own kernels) next
    to each of our engines (`engines`: name -> interpreter; e.g. bf16 and int4) on the same prompt ids and thread
    count, runs interleaved."""
    import subprocess
    from pathlib import Path

    from pasta.backends.llamacpp import llamacpp_python
    from pasta.models import embedded_gguf_path

    python = llamacpp_python()
    if model is not None and not str(model).endswith(".gguf"):
        return {"skipped": "llama.cpp needs a .gguf model (the default model has one)"}
    if not python.is_file():
        return {"skipped": f"{python} missing: bash scripts/setup.sh --llamacpp"}
    gguf = str(model or embedded_gguf_path())
    first = next(iter(engines.values()))
    ids = first.prompt_ids(prompt)
    script = Path(__file__).with_name("llamacpp_step.py")
    threads = torch.get_num_threads()
    ours: dict[str, list[float]] = {name: [] for name in engines}
    ours_tokens: dict[str, list[int]] = {}
    theirs = []
    theirs_tokens: list[int] = []
    for interp in engines.values():
        _decode_ms_per_step(interp, ids, 8)  # warm-up
    for _ in range(repeats):
        for name, interp in engines.items():
            ms, ours_tokens[name] = _decode_ms_per_step(interp, ids, new_tokens)
            ours[name].append(ms)
        done = subprocess.run([str(python), str(script), gguf, "--prompt-ids", ",".join(map(str, ids)),
                               "--new-tokens", str(new_tokens), "--threads", str(threads), "--repeats", "1"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return {"skipped": f"llama.cpp run failed: {done.stderr[-500:]}"}
        run = json.loads(done.stdout.strip().splitlines()[-1])
        theirs.append(run["ms_per_step"])
        theirs_tokens = run.get("token_ids", [])
    theirs_ms = statistics.median(theirs)
    out = {"threads": threads, "tokens": new_tokens, "llamacpp_ms_per_step": round(theirs_ms, 2)}
    for name, times in ours.items():
        suffix = "" if name == "bf16" else f"_{name}"
        out[f"ours{suffix}_ms_per_step"] = round(statistics.median(times), 2)
        out[f"ours{suffix}_vs_llamacpp"] = round(statistics.median(times) / theirs_ms, 3)
        # greedy agreement with llama.cpp: tokens equal before the first difference (rounding differs everywhere:
        # llama.cpp also rounds activations to 8 bits for its dot products)
        out[f"ours{suffix}_same_greedy_prefix_as_llamacpp"] = _same_prefix(ours_tokens[name], theirs_tokens)
    return out


def same_greedy_prefix(a: Interpreter, b: Interpreter, prompt: str, new_tokens: int) -> dict:
    """How far two engines' greedy answers agree (e.g. int4 against bf16): tokens equal before the first
    difference, of `new_tokens`."""
    ids = a.prompt_ids(prompt)
    limits = DecodeLimits(max_new_tokens=new_tokens, max_thread_tokens=new_tokens)
    x = a.tokenizer.encode(a.generate(ids, mode="sequential", limits=limits).text, add_special_tokens=False)
    y = b.tokenizer.encode(b.generate(ids, mode="sequential", limits=limits).text, add_special_tokens=False)
    return {"tokens": min(len(x), len(y)), "same_prefix": _same_prefix(x, y)}


def bench_busy_core(interp: Interpreter, prompt: str, new_tokens: int, repeats: int) -> dict:
    """Sequential decoding with another process spinning on one core vs idle, per thread policy: `auto` (the
    default of `pasta generate`/`serve`/`eval`: one thread per core left free), torch's default (one per core),
    and 1 thread. Idle and busy runs alternate."""
    import subprocess

    from pasta.threads import ThreadGovernor

    ids = interp.prompt_ids(prompt)
    limits = DecodeLimits(max_new_tokens=new_tokens, max_thread_tokens=new_tokens)
    saved = torch.get_num_threads()
    policies = {"auto": "auto", "torch_default": len(__import__("os").sched_getaffinity(0)), "one_thread": 1}
    out = {}
    try:
        for name, policy in policies.items():
            idle, busy, used = [], [], {}
            for _ in range(repeats):
                for state in ("idle", "busy"):
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if state == "busy" else None
                    try:
                        if spinner is not None:
                            time.sleep(0.5)  # let it take its core
                        ThreadGovernor(policy)  # as the CLI does at start-up
                        used[state] = torch.get_num_threads()
                        wall = interp.generate(ids, mode="sequential", limits=limits).stats.wall_s
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    (idle if state == "idle" else busy).append(wall)
            out[name] = {"idle_s": round(statistics.median(idle), 3), "busy_s": round(statistics.median(busy), 3),
                         "slowdown": round(statistics.median(busy) / statistics.median(idle), 3),
                         "threads_idle": used["idle"], "threads_busy": used["busy"]}
            print(f"busy core, {name}: {out[name]['slowdown']:.2f}x slower ({used['idle']} -> {used['busy']} threads)",
                  file=sys.stderr)
    finally:
        torch.set_num_threads(saved)
    return out


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
    add_threads_option(parser)
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd engine (sequential, vs the same HF generate)")
    add_quantize_option(parser)  # here: also time our engine with these weights, next to bf16 and llama.cpp
    parser.add_argument("--skip", default="", help="comma list of sections to skip: seq, llamacpp, parallel, busy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    apply_threads(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    interp = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=False)
    prompt = "Write a detailed essay about the history of the printing press and its effects on Europe."
    compiled = None
    if args.compile and "seq" not in skip:
        compiled = Interpreter(interp.model, interp.tokenizer, layout_config=interp.layout_config, compile=True)
    seq = None if "seq" in skip else bench_seq_vs_hf(interp, prompt, args.new_tokens, args.repeats, compiled)
    if seq:
        print(f"sequential engine / HF generate: {seq['seq_vs_hf']:.3f}", file=sys.stderr)
        if compiled is not None:
            print(f"compiled engine / HF generate: {seq['compiled_vs_hf']:.3f} (compiling: {seq['compile_s']:.0f} s)",
                  file=sys.stderr)
    engines = {"bf16": interp}
    agreement = None
    if args.quantize:
        engines[args.quantize] = Interpreter(interp.model, interp.tokenizer, layout_config=interp.layout_config,
                                             quantize=args.quantize)
        agreement = same_greedy_prefix(interp, engines[args.quantize], prompt, args.new_tokens)
        print(f"{args.quantize} vs bf16 greedy: {agreement['same_prefix']} of {agreement['tokens']} tokens equal "
              "before the first difference", file=sys.stderr)
    llamacpp = None if "llamacpp" in skip else bench_llamacpp(engines, prompt, args.new_tokens, args.repeats,
                                                               args.model)
    if llamacpp:
        print(f"llama.cpp: {llamacpp}", file=sys.stderr)
    ks = [int(k) for k in args.ks.split(",")]
    parallel = None if "parallel" in skip else bench_parallel(interp, prompt, ks, args.chunk_tokens, args.repeats)
    threads = torch.get_num_threads()
    busy = None if "busy" in skip else bench_busy_core(interp, prompt, args.new_tokens, args.repeats)
    report = {
        "model": interp.name, "dtype": args.dtype, "torch_threads": threads,
        "seq_vs_hf": round(seq["seq_vs_hf"], 3) if seq else None,
        "compiled_vs_hf": round(seq["compiled_vs_hf"], 3) if seq and "compiled_vs_hf" in seq else None,
        "seq_detail": seq, "vs_llamacpp": llamacpp, "quantized_agreement": agreement, "parallel": parallel,
        "busy_core": busy,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
