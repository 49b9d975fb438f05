"""A/B of the int4 engine's output head: fbgemm's int8 x int8 kernel (the default) vs `aten._weight_int8pack_mm`
(bf16 activations, the fallback), both timed interleaved with llama.cpp on the same prompt ids, 1 thread (the
`vs_llamacpp` section of bench/interpreter.py with two engines). Needs .venv-llamacpp (`scripts/setup.sh --llamacpp`).

    python scripts/int4_head_ab.py --repeats 5 --out results/bench/int4_head_ab.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from pasta.interpreter import Interpreter
from pasta.quantized import Int8Linear, fbgemm_available

PROMPT = "Write a detailed essay about the history of the printing press and its effects on Europe."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not fbgemm_available():
        p.error("this PyTorch has no fbgemm/x86 quantized engine: the int4 engine's head is int8pack already")
    torch.set_num_threads(1)
    path = Path(__file__).resolve().parent.parent / "bench" / "interpreter.py"
    spec = importlib.util.spec_from_file_location("bench_interpreter", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    base = Interpreter.from_pretrained(None, adapter=False)
    engines = {}
    for kernel in ("fbgemm", "int8pack"):
        interp = Interpreter(base.model, base.tokenizer, layout_config=base.layout_config, quantize="int4")
        if kernel != "fbgemm":  # the runner's own head is fbgemm's (the default where available)
            interp.runner._target.lm_head = Int8Linear(base.model.lm_head.weight, kernel=kernel)
        engines[f"{kernel}_head"] = interp
    out = bench.bench_llamacpp(engines, PROMPT, a.new_tokens, a.repeats, None)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
