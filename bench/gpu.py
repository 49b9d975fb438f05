"""The engine on a GPU, with random-weight models of real shapes (nothing to download), in under 5 minutes.

    python bench/gpu.py --json                       # CUDA: SmolLM2-135M, Llama-1B and Llama-8B shapes, bf16
    python bench/gpu.py --smoke --json               # CPU, tiny shapes: checks the script end to end
    python bench/gpu.py --json --graphs llama-1b     # also CUDA-graph decode steps on that shape (pasta.step_graphs)

Reports, per shape: parameters, the per-step time of asynchronous decoding at k = 1, 4, 8 parallel chunks next to
the memory-bandwidth floor (bytes of weights / `--bandwidth-gbs`), `seq_vs_hf` (our sequential decoding / HF
`generate` with its KV cache, same tokens); for the first shape also teacher-forced realized / theoretical speedups
at k = 2, 4, 8, 16 (bench/interpreter.py's protocol) and exactness against the naive oracle in fp32 (max logit
difference, `pasta.reference`). Tokens come from the embedded model's tokenizer. Ratios are measured side by side.
With `--graphs SHAPE`: per-step ms of decode steps replayed from CUDA graphs on that shape, the runner's counts
(static / eager steps, captures) and any capture error, and exactness of the graphed engine against the oracle (fp32).
On CPU (--smoke) the same static steps run uncaptured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152),
    "llama-1b": (2048, 16, 32, 8, 8192, 128256),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
}
SMOKE = {"tiny-a": (64, 2, 4, 2, 128, 49152), "tiny-b": (128, 2, 4, 2, 256, 49152)}


def _interpreter_bench():
    spec = importlib.util.spec_from_file_location("bench_interpreter", HERE / "interpreter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(shape, dtype, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, heads, kv, inter, vocab = shape
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=8192, tie_word_embeddings=vocab < 100_000)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def per_step_ms(interp, bench, ks, chunk_tokens, device) -> list[dict]:
    from pasta.decoding import DecodeLimits

    ids = interp.prompt_ids("Give some tips.")
    out = []
    for k in ks:
        teacher = bench.forced_answer(interp.tokenizer, k, chunk_tokens)
        limits = DecodeLimits(max_new_tokens=100_000, max_thread_tokens=10_000, max_threads=max(ks))
        mode = "async" if k > 1 else "sequential"
        interp.generate(ids, teacher=teacher, mode=mode, limits=limits)  # warm-up
        sync(device)
        start = time.perf_counter()
        result = interp.generate(ids, teacher=teacher, mode=mode, limits=limits)
        sync(device)
        wall = time.perf_counter() - start
        out.append({"k": k, "steps": result.stats.steps, "ms_per_step": 1000 * wall / result.stats.steps})
    return out


def exactness(tokenizer, device, shape, cuda_graphs: bool = False) -> float:
    """Max |logit difference| between the cached engine and the naive oracle (full recomputation), fp32."""
    from pasta.interpreter import Interpreter
    from pasta.reference import reference_generate

    bench = _interpreter_bench()
    model = build(shape, torch.float32, device)
    interp = Interpreter(model, tokenizer, cuda_graphs=cuda_graphs)
    ids = interp.prompt_ids("Give some tips.")
    teacher = bench.forced_answer(tokenizer, 3, 12)
    fast = interp.generate(ids, teacher=teacher, record_logits=True)
    naive = reference_generate(interp.runner, interp.start(ids, teacher=teacher))
    assert len(fast.logits) == len(naive)
    return max(float((a - b).abs().max()) for (_, a), (_, b) in zip(fast.logits, naive))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--bandwidth-gbs", type=float, default=4800.0, help="memory bandwidth for the floor (H200: 4800)")
    p.add_argument("--chunk-tokens", type=int, default=48)
    p.add_argument("--seq-tokens", type=int, default=64)
    p.add_argument("--compile", default=None, metavar="SHAPE",
                   help="also time the torch.compile'd engine on this shape (e.g. llama-1b; compiling takes a while)")
    p.add_argument("--graphs", default=None, metavar="SHAPE",
                   help="also time decode steps replayed from CUDA graphs on this shape (e.g. llama-1b)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    device = a.device or ("cpu" if a.smoke else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --smoke (CPU) or on a GPU machine")
    shapes = SMOKE if a.smoke else {n: SHAPES[n] for n in (a.shapes.split(",") if a.shapes else SHAPES)}
    if a.smoke:
        a.chunk_tokens, a.seq_tokens = min(a.chunk_tokens, 12), min(a.seq_tokens, 16)
    from pasta.interpreter import Interpreter
    from pasta.models import load_tokenizer

    bench = _interpreter_bench()
    tokenizer = load_tokenizer(None)
    started = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else device,
                    "dtype": "bfloat16", "shapes": {}}
    for i, (name, shape) in enumerate(shapes.items()):
        model = build(shape, torch.bfloat16, device)
        params = sum(p.numel() for p in model.parameters())
        interp = Interpreter(model, tokenizer)
        row = {"params": params, "floor_ms": 1000 * params * 2 / (a.bandwidth_gbs * 1e9),
               "per_step": per_step_ms(interp, bench, [1, 4, 8], a.chunk_tokens, device),
               **bench.bench_seq_vs_hf(interp, "Give some tips.", a.seq_tokens, 1)}
        if i == 0:
            row["parallel"] = bench.bench_parallel(interp, "Give some tips.", [2, 4, 8, 16], a.chunk_tokens, 1)
        if a.compile == name:  # the first call compiles (timed apart), then the same per-step measurement
            compiled = Interpreter(model, tokenizer, compile=True)
            t0 = time.perf_counter()
            per_step_ms(compiled, bench, [1], 4, device)
            row["compile_s"] = time.perf_counter() - t0
            row["per_step_compiled"] = per_step_ms(compiled, bench, [1, 4, 8], a.chunk_tokens, device)
            del compiled
        if a.graphs == name:
            graphed = Interpreter(model, tokenizer, cuda_graphs=True)
            t0 = time.perf_counter()
            per_step_ms(graphed, bench, [1, 2, 4, 8], 4, device)  # captures every bucket these steps use
            row["graphs_first_s"] = time.perf_counter() - t0
            row["per_step_graphs"] = per_step_ms(graphed, bench, [1, 4, 8], a.chunk_tokens, device)
            row["graphs_runner"] = {**graphed.runner.counts, "graphs": graphed.runner.graphs,
                                    "capture_error": graphed.runner.capture_error}
            del graphed
        report["shapes"][name] = row
        print(f"{name}: {params / 1e6:.0f}M params, step ms at k=1/4/8: "
              + "/".join(f"{r['ms_per_step']:.2f}" for r in row["per_step"])
              + f" (floor {row['floor_ms']:.2f}), seq_vs_hf {row['seq_vs_hf']:.3f}", file=sys.stderr)
        del model, interp
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    report["exactness_fp32_max_abs"] = exactness(tokenizer, device, next(iter(shapes.values())))
    if a.graphs:
        report["exactness_graphs_fp32_max_abs"] = exactness(tokenizer, device, next(iter(shapes.values())),
                                                            cuda_graphs=True)
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report, indent=1) if a.json else
          f"exactness vs oracle (fp32): {report['exactness_fp32_max_abs']:.2e}; {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
