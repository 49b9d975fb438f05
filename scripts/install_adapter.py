"""Install a trained adapter as the embedded default: copy it as bf16 (half the size; decoding merges it into the
base model) with its layout, decoding conventions and training records into src/pasta/assets/default-adapter,
keeping the data card (README.md) that is there. With --keep-as-stage1 the records of the adapter being replaced
(the Stage-1 run a further round started from) stay beside the new ones as stage1_*.

    python scripts/install_adapter.py runs/default-sft
    python scripts/install_adapter.py runs/default-onpolicy --keep-as-stage1
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RECORDS = ("adapter_config.json", "pasta_layout.json", "pasta_decoding.json", "sft_config.json", "data_stats.json",
           "training_log.csv", "loss.png")
STAGE1_RECORDS = ("training_log.csv", "sft_config.json", "data_stats.json", "loss.png")


def install(out: Path, dest: Path, keep_as_stage1: bool = False) -> None:
    missing = [name for name in ("adapter_model.safetensors", *RECORDS) if not (out / name).is_file()]
    if missing:
        raise SystemExit(f"{out}: not a finished `pasta train sft` run (missing {', '.join(missing)})")
    card = dest / "README.md"
    keep = card.read_text() if card.is_file() else None
    stage1 = {}
    if keep_as_stage1:
        stage1 = {f"stage1_{name}": (dest / name).read_bytes() for name in STAGE1_RECORDS if (dest / name).is_file()}
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, dest / "adapter_model.safetensors")
    for name in RECORDS:
        shutil.copy(out / name, dest / name)
    config = json.loads((dest / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "default"  # the embedded model, not this machine's cache path
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if keep is not None:
        card.write_text(keep)
    for name, data in stage1.items():
        (dest / name).write_bytes(data)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished `pasta train sft` output folder")
    parser.add_argument("--dest", default=str(Path(__file__).resolve().parent.parent / "src" / "pasta" / "assets"
                                              / "default-adapter"))
    parser.add_argument("--keep-as-stage1", action="store_true",
                        help="keep the replaced adapter's training records as stage1_*")
    args = parser.parse_args()
    install(Path(args.run), Path(args.dest), args.keep_as_stage1)
    print(f"adapter {args.run} installed in {args.dest}")
