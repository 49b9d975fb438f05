"""Does 2:4 sparsity pay at inference? Dense vs 2:4 semi-structured prefill and decode, side by side.

    python bench/sparse_infer.py --json                 # CUDA (compute capability >= 8.0): the 1b shape, bf16
    python bench/sparse_infer.py --json --smoke         # anywhere, seconds: a tiny shape

A random-weight model of a preset's shape is pruned 2:4 with sparsellm's own pruner (every linear weight,
the head included). Two copies are timed, interleaved call by call so machine load hits both alike:

- on CUDA with capability >= 8.0: ``masked`` (the 2:4 zeros stored densely: what ``sparsellm train``
  exports) vs ``semi_structured`` (every linear weight converted with ``torch.sparse.to_sparse_semi_structured``);
  the outputs are compared (max |logit difference| relative to max |logit|, and top-1 agreement), and each
  distinct linear shape is also timed alone at prefill and decode sizes;
- elsewhere (CPU, older GPUs) the semi-structured format is unavailable (the reason is printed), and what
  is timed is ``dense`` (the unpruned model) vs ``masked`` (its 2:4-pruned copy, zeros stored): the cost of a
  pruned model served with dense kernels, expected ~1.0x.

Prefill: one forward pass of ``--batch`` x ``--prompt`` tokens without a cache. Decode: ``--decode`` steps of
one token per sequence after a ``--prompt``-token prefill, with Hugging Face's KV cache; ms per step.
Speed-ups are baseline ms / candidate ms (above 1: the sparse copy is faster).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import statistics
import time

import torch
import torch.nn.functional as F

from sparsellm.infer import model_pattern, semi_structured_available, speedup_note, to_semi_structured
from sparsellm.models import build_model
from sparsellm.pruner import Pruner, PrunerConfig
from sparsellm.schedule import PruningSchedule


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device) -> float:
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    return (time.perf_counter() - t0) * 1e3


def side_by_side(fns: dict[str, callable], reps: int, dev: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function, called in alternating order ``reps`` times after ``warmup`` calls."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(_timed(fns[n], dev))
    return {n: statistics.median(v) for n, v in times.items()}


@torch.no_grad()
def prefill(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def decode(model, ids: torch.Tensor, steps: int) -> None:
    # transformers >= 5.2x names the KV cache `cache` (`past_key_values` before)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True)
    cache, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(input_ids=nxt, use_cache=True, **{key: cache})
        cache, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)


def prune_2_4(model) -> Pruner:
    p = Pruner(model, PrunerConfig(PruningSchedule(1, 0.5, 0, 0, 1), structure="2:4"))
    p.step(0)
    return p


def linear_shapes_bench(model, sparse, converted: list[str], tokens: dict[str, int], reps: int, dev,
                        dtype) -> list[dict]:
    """Each distinct converted linear shape alone: the masked dense weight vs its semi-structured twin."""
    rows, seen = [], set()
    dense_mods, sparse_mods = dict(model.named_modules()), dict(sparse.named_modules())
    for name in converted:
        m, wd = sparse_mods[name], dense_mods[name].weight
        if tuple(wd.shape) in seen:
            continue
        seen.add(tuple(wd.shape))
        for label, n_tok in tokens.items():
            x = torch.randn(n_tok, wd.shape[1], device=dev, dtype=dtype)
            t = side_by_side({"masked": lambda: F.linear(x, wd), "semi_structured": lambda: F.linear(x, m.weight)},
                             reps, dev)
            rows.append({"shape": list(wd.shape), "tokens": n_tok, "at": label, "masked_ms": t["masked"],
                         "semi_structured_ms": t["semi_structured"], "speedup": t["masked"] / t["semi_structured"]})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model shape (default: 1b on CUDA, base on CPU, nano with --smoke)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=None, help="sequences (default 8 on CUDA, 1 on CPU)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 512 on CUDA, 128 on CPU)")
    ap.add_argument("--decode", type=int, default=None, help="decode steps (default 32 on CUDA, 16 on CPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions of each (default 10 / 5)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads")
    ap.add_argument("--smoke", action="store_true", help="tiny shape and sizes: checks the pipeline in seconds")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ok, why = semi_structured_available(dev if dev.type == "cuda" else None)
    cuda = dev.type == "cuda"
    preset = a.preset or ("nano" if a.smoke else "1b" if cuda else "base")
    vocab = 256 if a.smoke and a.vocab == 32000 else a.vocab
    batch = a.batch or (2 if a.smoke else 8 if cuda else 1)
    prompt = a.prompt or (16 if a.smoke else 512 if cuda else 128)
    steps = a.decode or (4 if a.smoke else 32 if cuda else 16)
    reps = a.reps or (3 if a.smoke else 10 if cuda else 5)
    dtype = torch.bfloat16 if cuda else torch.float32

    with torch.device(dev):  # weights made on the device (a 1b shape takes long to initialise on a CPU)
        dense = build_model(preset, vocab, prompt + steps + 1, seed=0)
    masked = copy.deepcopy(dense)
    prune_2_4(masked)
    dense, masked = dense.to(dtype).eval(), masked.to(dtype).eval()
    pat = model_pattern(masked.state_dict())  # shapes judged for bf16, the dtype the kernels would serve
    out: dict = {"device": torch.cuda.get_device_name(dev) if cuda else "cpu", "preset": preset, "vocab": vocab,
                 "dtype": str(dtype).replace("torch.", ""), "batch": batch, "prompt": prompt, "decode_steps": steps,
                 "reps": reps, "threads": a.threads, "pattern": pat["pattern"], "sparsity": pat["sparsity"],
                 "inspect_line": speedup_note(pat), "semi_structured_available": ok, "reason": why}
    ids = torch.randint(0, vocab, (batch, prompt), device=dev)

    if ok:
        from sparsellm.infer import semi_structured_backend

        sparse = copy.deepcopy(masked)
        converted = to_semi_structured(sparse)
        out["backend"] = semi_structured_backend()
        out["converted_layers"] = len(converted)
        out["linear_layers"] = pat["linear_layers"]
        ref, got = prefill(masked, ids).float(), prefill(sparse, ids).float()
        out["max_rel_logit_diff"] = float((got - ref).abs().max() / ref.abs().max())
        out["top1_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
        base, cand = ("masked", masked), ("semi_structured", sparse)
    else:
        ref, got = prefill(dense, ids).float(), prefill(masked, ids).float()
        out["note"] = ("semi-structured sparsity unavailable here, so the 2:4-pruned model runs on dense kernels: "
                       "masked (zeros stored) vs dense")
        base, cand = ("dense", dense), ("masked", masked)
    out["baseline"], out["candidate"] = base[0], cand[0]

    t = side_by_side({base[0]: lambda: prefill(base[1], ids), cand[0]: lambda: prefill(cand[1], ids)}, reps, dev)
    out["prefill_ms"] = t
    out["prefill_speedup"] = t[base[0]] / t[cand[0]]
    # a decode call is one cached prefill plus `steps` one-token steps; the prefill alone is timed beside it
    # and subtracted, which leaves ms per decode step
    t = side_by_side({base[0]: lambda: decode(base[1], ids, steps), cand[0]: lambda: decode(cand[1], ids, steps),
                      "pre_" + base[0]: lambda: decode(base[1], ids, 0), "pre_" + cand[0]: lambda: decode(cand[1], ids, 0)},
                     max(2, reps // 2), dev, warmup=1)
    out["decode_ms_per_step"] = {k: max(0.0, (t[k] - t["pre_" + k]) / steps) for k in (base[0], cand[0])}
    d = out["decode_ms_per_step"]
    out["decode_speedup"] = d[base[0]] / d[cand[0]] if d[cand[0]] > 0 else float("nan")
    if ok:
        out["linear_shapes"] = linear_shapes_bench(masked, sparse, converted,
                                                   {"prefill": batch * prompt, "decode": batch}, reps, dev, dtype)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return out


if __name__ == "__main__":
    main()
