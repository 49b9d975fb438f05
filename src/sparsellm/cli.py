"""``sparsellm`` command line: schedule, train, inspect, fit, plan."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _print(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=float))
        return
    for k, v in obj.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv:.6g}" if isinstance(vv, float) else f"  {kk}: {vv}")
        elif isinstance(v, float):
            print(f"{k}: {v:.6g}")
        else:
            print(f"{k}: {v}")


def _frac_or_step(v: str) -> float:
    x = float(v)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return x


def cmd_schedule(a) -> int:
    from .schedule import PruningSchedule, schedule_from_compute_fractions

    for name in ("prunable_params", "non_prunable_params", "tokens_per_step"):
        value = getattr(a, name)
        if value is not None and (value < 0 or (name == "tokens_per_step" and value == 0)):
            raise ValueError(f"--{name.replace('_', '-')} must be {'> 0' if name == 'tokens_per_step' else '>= 0'}, "
                             f"got {value}")

    if a.start_fraction is not None or a.end_fraction is not None:
        s = schedule_from_compute_fractions(a.total_steps, a.sparsity, a.start_fraction or 0.25,
                                            a.end_fraction or 0.75, a.frequency, a.kind)
    else:
        s = PruningSchedule(a.total_steps, a.sparsity, a.start_step, a.end_step if a.end_step is not None else a.start_step,
                            a.frequency, a.kind)
    out = s.summary(a.prunable_params, a.non_prunable_params, a.tokens_per_step)
    if a.show_events:
        out["events"] = [{"step": t, "density": d} for t, d in zip(s.event_steps(), s.event_densities())]
    _print(out, a.json)
    return 0


def cmd_train(a) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        out_dir=a.out, data=a.data, preset=a.preset, tokenizer=a.tokenizer, seq_len=a.seq_len,
        batch_size=a.batch_size, steps=a.steps, tokens=a.tokens, lr=a.lr, sparsity=a.sparsity,
        schedule=a.kind, start_step=a.start_step, end_step=a.end_step, start_fraction=a.start_fraction,
        end_fraction=a.end_fraction, frequency=a.frequency, method=a.method, structure=a.structure,
        exempt=a.exempt or [], eval_every=a.eval_every, eval_batches=a.eval_batches, save_every=a.save_every,
        seed=a.seed, resume=a.resume, export=not a.no_export, threads=a.threads, max_chars=a.max_chars,
        device=a.device, bf16=a.bf16, compile=a.compile,
    )
    s = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one report
        _print(s, a.json)
    return 0


def cmd_inspect(a) -> int:
    from .train import inspect

    r = inspect(a.path)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        for n, v in r["layers"].items():
            print(f"{n:60s} {str(tuple(v['shape'])):>14s}  sparsity {v['sparsity']:.3f}  {v['pattern']}")
        print(f"linear params {r['linear_params']}, non-zero {r['nonzero_linear_params']}, sparsity {r['sparsity']:.4f}")
        print(f"inference speed-up ({r['pattern']}): {r['speedup']}")
    return 0


def cmd_fit(a) -> int:
    from . import law as L

    runs = L.read_runs(a.runs)
    f = L.fit(runs, a.law)
    out = f.to_dict()
    if a.loo:
        lo = L.loo(runs, a.law, progress=not a.json)
        out["loo"] = {k: v for k, v in lo.items() if k != "predicted"}
    if a.bootstrap:
        out["ci95"] = L.bootstrap(runs, a.law, n=a.bootstrap, base=f, progress=not a.json)
    if a.plot:
        L.plot_pred_vs_actual(runs, {a.law: L.predict(f, runs)}, a.plot)
    _print(out, a.json)
    return 0


def cmd_plan(a) -> int:
    from .plan import best_plan, frontier, plot_frontier

    if a.coefficients:
        try:
            with open(a.coefficients, encoding="utf-8") as f:
                coef = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{a.coefficients}: not a JSON file of coefficients: {e}") from None
        coef = coef.get("coefficients", coef) if isinstance(coef, dict) else coef
        missing = [k for k in ("E", "A", "alpha", "B", "beta") if not isinstance(coef, dict) or k not in coef]
        if missing:
            raise ValueError(f"{a.coefficients}: missing coefficient(s) {missing}")
    elif a.runs:
        from . import law as L
        coef = L.fit(L.read_runs(a.runs), "avg").coefficients
    else:
        raise ValueError("give --runs (to fit the avg law) or --coefficients (a JSON file)")
    out: dict = {"coefficients": coef}
    p = best_plan(coef, a.compute, a.inference_params, a.max_sparsity)
    out["best"] = p.to_dict()
    target = a.target_loss if a.target_loss is not None else p.loss
    grid = np.logspace(np.log10(a.inference_params) - 1, np.log10(a.inference_params) + 1, 9)
    rows = frontier(coef, target, grid, a.max_sparsity)
    out["target_loss"] = target
    out["frontier"] = rows
    if a.plot:
        plot_frontier(rows, a.plot, target)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        _print({"best": out["best"]}, False)
        print(f"\nPareto frontier at loss {target:.4g}:")
        print(f"{'inference params':>17s} {'dense FLOPs':>12s} {'sparse FLOPs':>12s} {'N':>10s} {'sparsity':>8s}")
        for r in rows:
            dc = f"{r['dense_compute']:.3e}" if r["dense_compute"] else "unreachable"
            sc = f"{r['sparse_compute']:.3e}" if r["sparse_compute"] else "unreachable"
            n = f"{r['sparse_params']:.3e}" if r["sparse_params"] else "-"
            s = f"{r['sparse_sparsity']:.2f}" if r["sparse_sparsity"] is not None else "-"
            print(f"{r['inference_params']:17.3e} {dc:>12s} {sc:>12s} {n:>10s} {s:>8s}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sparsellm", description="Sparse pre-training and the average-parameter scaling law")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("schedule", help="density schedule, average density / params, FLOPs")
    p.add_argument("--total-steps", type=int, required=True)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--start-step", type=int, default=0)
    p.add_argument("--end-step", type=int, default=None)
    p.add_argument("--start-fraction", type=float, default=None, help="start at this fraction of training compute")
    p.add_argument("--end-fraction", type=float, default=None, help="end at this fraction of training compute")
    p.add_argument("--frequency", type=int, default=100)
    p.add_argument("--kind", choices=["geometric", "cubic", "oneshot"], default="geometric")
    p.add_argument("--prunable-params", type=int, default=None)
    p.add_argument("--non-prunable-params", type=int, default=0)
    p.add_argument("--tokens-per-step", type=int, default=None)
    p.add_argument("--show-events", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_schedule)

    p = sub.add_parser("train", help="pre-train a LLaMA-style model with gradual pruning")
    p.add_argument("--out", required=True)
    p.add_argument("--data", nargs="+", default=["shakespeare"],
                   help="text files, folders, globs, a datasets save_to_disk folder, or 'shakespeare'")
    p.add_argument("--preset", default="nano")
    p.add_argument("--tokenizer", default="byte", help="byte | bpe:VOCAB | tokenizer folder or file")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int)
    g.add_argument("--tokens", type=int)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sparsity", type=float, default=0.0)
    p.add_argument("--kind", choices=["geometric", "cubic", "oneshot"], default="geometric")
    p.add_argument("--start-step", type=int, default=None)
    p.add_argument("--end-step", type=int, default=None)
    p.add_argument("--start-fraction", type=float, default=0.25)
    p.add_argument("--end-fraction", type=float, default=0.75)
    p.add_argument("--frequency", type=int, default=100)
    p.add_argument("--method", choices=["magnitude", "random"], default="magnitude")
    p.add_argument("--structure", choices=["unstructured", "2:4"], default="unstructured")
    p.add_argument("--exempt", nargs="*", help="regexes of parameter names never pruned")
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for forward passes (fp32 weights and optimizer)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                   help="torch.compile the model (default backend inductor)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("inspect", help="per-layer sparsity of a run folder, checkpoint or HF folder")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("fit", help="fit a scaling law to runs.csv")
    p.add_argument("--runs", required=True)
    p.add_argument("--law", choices=["avg", "dense", "frantar"], default="avg")
    p.add_argument("--loo", action="store_true", help="leave-one-out prediction error")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for 95%% intervals")
    p.add_argument("--plot", default=None, help="predicted-vs-actual PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("plan", help="best (size, sparsity, tokens) for a compute budget; Pareto frontier")
    p.add_argument("--runs", default=None)
    p.add_argument("--coefficients", default=None, help="JSON with E, A, alpha, B, beta")
    p.add_argument("--compute", type=float, required=True, help="training FLOPs")
    p.add_argument("--inference-params", type=float, required=True)
    p.add_argument("--max-sparsity", type=float, default=0.9)
    p.add_argument("--target-loss", type=float, default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except ValueError as e:
        print(f"sparsellm {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read: name it, no traceback
        print(f"sparsellm {a.cmd}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
