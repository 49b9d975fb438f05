"""Install a trained adapter as the embedded default: copy it as bf16 (half the size; decoding merges it into the
base model) with its layout, decoding conventions and training records into src/pasta/assets/default-adapter,
keeping the data card (README.md) that is there. With --keep-as PREFIX the records of the adapter being replaced
(the run a further round started from) stay beside the new ones as PREFIX_*, and so do the records earlier installs
kept (stage1_* when a second round replaces the first); --keep-as-stage1 is --keep-as stage1.

    python scripts/install_adapter.py runs/default-sft
    python scripts/install_adapter.py runs/default-onpolicy --keep-as-stage1
    python scripts/install_adapter.py runs/default-onpolicy2 --keep-as round1
    python scripts/install_adapter.py runs/pref/round-1/adapter --keep-as round1   # a Stage-2 round

A Stage-2 round's adapter (`pasta train pref`: OUT/round-K/adapter, stage 1 folded in) comes with that round's
records instead of the fine-tune's: pref_config.json, pref_done.json and pref_train_log.jsonl.

--decoding KEY=VALUE (repeatable) records a decoding convention over the run's own pasta_decoding.json, e.g.
`--decoding presence_penalty=0.5`: requests that leave it unset are decoded with it (docs/pasta-lang.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RECORDS = ("adapter_config.json", "pasta_layout.json", "pasta_decoding.json", "sft_config.json", "data_stats.json",
           "training_log.csv", "loss.png")
PREF_RECORDS = ("pref_config.json", "pref_done.json", "pref_train_log.jsonl")
STAGE1_RECORDS = ("training_log.csv", "sft_config.json", "data_stats.json", "loss.png", *PREF_RECORDS)


def _sources(out: Path) -> dict[str, Path]:
    """Installed name -> file, for an SFT run folder or a Stage-2 round's adapter folder."""
    if out.name == "adapter" and (out.parent / "done.json").is_file():  # OUT/round-K/adapter of `pasta train pref`
        records = {name: out / name for name in ("adapter_config.json", "pasta_layout.json", "pasta_decoding.json")}
        return {**records, "pref_config.json": out.parent.parent / "pref_config.json",
                "pref_done.json": out.parent / "done.json", "pref_train_log.jsonl": out.parent / "train_log.jsonl"}
    return {name: out / name for name in RECORDS}


def parse_decoding(items: list[str]) -> dict:
    """KEY=VALUE pairs (JSON values: true, 0.5) -> conventions, checked as decoding checks pasta_decoding.json."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--decoding {item!r}: expected KEY=VALUE, e.g. presence_penalty=0.5")
        try:
            found[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"--decoding {item!r}: {value!r} is not a JSON value (true, false, 0.5)") from None
    return _checked(found)


def _checked(conventions: dict) -> dict:
    from pasta.interpreter import check_decoding_conventions

    try:
        return check_decoding_conventions(conventions, "--decoding")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def install(out: Path, dest: Path, keep_as: str | None = None, decoding: dict | None = None) -> None:
    sources = _sources(out)
    missing = [str(path) for path in (out / "adapter_model.safetensors", *sources.values()) if not path.is_file()]
    if missing:
        raise SystemExit(f"{out}: not a finished `pasta train sft` run or `pasta train pref` round "
                         f"(missing {', '.join(missing)})")
    card = dest / "README.md"
    keep = card.read_text() if card.is_file() else None
    kept = {}
    if keep_as:
        if not keep_as.isidentifier() or "_" in keep_as:
            raise SystemExit(f"--keep-as {keep_as!r}: use a short name without underscores, e.g. stage1 or round1")
        # Records earlier installs kept (PREFIX_name) first, then the replaced adapter's own under the new prefix.
        kept = {path.name: path.read_bytes() for path in sorted(dest.glob("*_*"))
                if path.is_file() and path.name.split("_", 1)[1] in STAGE1_RECORDS}
        clash = [name for name in kept if name.startswith(f"{keep_as}_")]
        if clash:
            raise SystemExit(f"{dest} already keeps {', '.join(clash)}: pick another --keep-as prefix")
        kept |= {f"{keep_as}_{name}": (dest / name).read_bytes() for name in STAGE1_RECORDS if (dest / name).is_file()}
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, dest / "adapter_model.safetensors")
    for name, path in sources.items():
        shutil.copy(path, dest / name)
    config = json.loads((dest / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "default"  # the embedded model, not this machine's cache path
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if decoding:  # over the run's own conventions; an invalid result leaves the run's file as it is
        recorded = json.loads((dest / "pasta_decoding.json").read_text())
        merged = _checked({**recorded, **decoding})
        (dest / "pasta_decoding.json").write_text(json.dumps(merged))
    if keep is not None:
        card.write_text(keep)
    for name, data in kept.items():
        (dest / name).write_bytes(data)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished `pasta train sft` output folder, or a `pasta train pref` round's "
                                    "adapter folder (OUT/round-K/adapter)")
    parser.add_argument("--dest", default=str(Path(__file__).resolve().parent.parent / "src" / "pasta" / "assets"
                                              / "default-adapter"))
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-as", metavar="PREFIX", help="keep the replaced adapter's training records as PREFIX_*")
    keep.add_argument("--keep-as-stage1", action="store_const", const="stage1", dest="keep_as",
                      help="the same as --keep-as stage1")
    parser.add_argument("--decoding", action="append", default=[], metavar="KEY=VALUE",
                        help="record a decoding convention in pasta_decoding.json, e.g. presence_penalty=0.5")
    args = parser.parse_args()
    install(Path(args.run), Path(args.dest), args.keep_as, parse_decoding(args.decoding))
    print(f"adapter {args.run} installed in {args.dest}")
