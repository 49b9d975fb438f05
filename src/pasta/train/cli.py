"""`pasta train sft|pref`."""

from __future__ import annotations

import argparse
import json
import sys


def add_train_parser(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model to write Pasta-Lang (sft) or to be fast and good (pref)")
    stages = train.add_subparsers(dest="stage", required=True)
    p = stages.add_parser("sft", help="stage 1: supervised fine-tuning on annotated responses, layout-exact")
    p.add_argument("--data", nargs="+", required=True, help="JSONL files with prompt + annotated fields")
    p.add_argument("--out", required=True, help="output folder (adapter, layout, log, loss plot, checkpoints)")
    p.add_argument("--model", default=None, help="base model folder or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--init-adapter", default=None,
                   help="continue from this LoRA adapter folder ('default': the embedded one) instead of a fresh one")
    p.add_argument("--plain-data", nargs="+", default=None,
                   help="JSONL files the plain (unforked) examples come from (default: the rows without chunks in --data)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--annotated-fraction", type=_fraction_or_data, default=0.8,
                   help="share of examples with a promise (0-1), or 'data': as many as the data has")
    p.add_argument("--reserve-factor", type=float, default=2.0, help="a chunk reserves factor x its tokens positions")
    p.add_argument("--fixed-reserve", type=int, default=None, help="reserve this many positions for every chunk")
    p.add_argument("--main-loss-weight", type=float, default=1.0,
                   help="loss weight of the main thread's tokens (topics, sync decisions) relative to the chunks'")
    p.add_argument("--unlikelihood", type=float, default=0.0,
                   help="weight of the unlikelihood loss on tokens that copy an earlier outline item (0: off)")
    p.add_argument("--repeat-data", nargs="+", default=None,
                   help="correction-pair JSONL files: their outline_repeat rejected sides (the model's own repeats) "
                        "are trained with the unlikelihood loss alone; needs --unlikelihood")
    p.add_argument("--no-unlikelihood-empty-items", dest="unlikelihood_empty_items", action="store_false",
                   help="with --unlikelihood, do not push down separators at an outline item's start (row r25)")
    p.add_argument("--correction-data", nargs="+", default=None,
                   help="correction-pair JSONL files (any kind): where each pair's sides part, cross-entropy on the "
                        "chosen token and unlikelihood on the rejected one; needs --unlikelihood")
    p.add_argument("--correction-kinds", nargs="+", default=None,
                   help="only correction pairs of these kinds (outline_repeat, outline_done, one_item; default: all)")
    p.add_argument("--correction-weight", type=float, default=10.0,
                   help="cross-entropy weight of a correction's chosen token (an answer's tokens weigh 1)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.set_defaults(func=run_sft)
    try:
        from .pref_cli import add_pref_arguments, run_pref
    except ImportError:  # stage 2 not installed in this checkout
        return
    q = stages.add_parser("pref", help="stage 2: BoNBoN preference optimization on speed + quality")
    add_pref_arguments(q)
    q.set_defaults(func=run_pref)


def _fraction_or_data(value: str) -> float | None:
    if value == "data":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'data', got {value!r}") from None


def run_sft(args: argparse.Namespace) -> int:
    from .sft import SFTConfig, train_sft

    config = SFTConfig(
        data=args.data, plain_data=args.plain_data, output_dir=args.out, model=args.model, lora=not args.full, lora_r=args.lora_r,
        init_adapter=args.init_adapter,
        lora_alpha=args.lora_alpha, learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length,
        max_examples=args.max_examples, annotated_fraction=args.annotated_fraction,
        reserve_factor=args.reserve_factor, fixed_reserve=args.fixed_reserve, main_loss_weight=args.main_loss_weight, bf16=args.bf16, save_steps=args.save_steps, seed=args.seed,
        resume=args.resume, torch_threads=args.threads, unlikelihood=args.unlikelihood, repeat_data=args.repeat_data,
        unlikelihood_empty_items=args.unlikelihood_empty_items, correction_data=args.correction_data,
        correction_weight=args.correction_weight, correction_kinds=args.correction_kinds,
    )
    out = train_sft(config)
    print(json.dumps({"output": str(out)}), file=sys.stdout)
    return 0
