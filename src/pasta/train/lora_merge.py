"""Folding two LoRA adapters into one (Stage 2 trains a LoRA on top of the merged Stage-1 model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def combine_lora_adapters(first: str | Path, second: str | Path, target: str | Path) -> None:
    """Write to `target` one LoRA adapter whose weight update is `first`'s plus `second`'s, so that loading it on
    the base model alone gives base + first + second. Exact: ranks are concatenated (A = [A1; A2],
    B = [s1 B1, s2 B2], scaling folded into B, lora_alpha = r so the new scaling is 1); a module adapted by one
    adapter only gets zero blocks from the other. Stage 2 trains a LoRA on top of the merged stage-1 model, so its
    own adapter is a delta that means nothing on the base model; this makes the saved adapter self-contained."""
    from safetensors.torch import load_file, save_file

    first, second, target = Path(first), Path(second), Path(target)
    configs = [json.loads((f / "adapter_config.json").read_text()) for f in (first, second)]
    for cfg, f in zip(configs, (first, second)):
        if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("rank_pattern") \
                or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
            raise ValueError(f"{f}: only plain LoRA adapters can be combined")
    weights = [load_file(str(f / "adapter_model.safetensors")) for f in (first, second)]
    split = []
    for w, f in zip(weights, (first, second)):
        mods: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in w.items():
            for part in ("lora_A", "lora_B"):
                if key.endswith(f".{part}.weight"):
                    mods.setdefault(key[: -len(f".{part}.weight")], {})[part] = tensor.float()
                    break
            else:
                raise ValueError(f"{f}: unexpected tensor {key} in a LoRA adapter")
        split.append(mods)
    ranks = [int(c["r"]) for c in configs]
    scales = [float(c["lora_alpha"]) / r for c, r in zip(configs, ranks)]
    out: dict[str, torch.Tensor] = {}
    for name in sorted(set(split[0]) | set(split[1])):
        shapes = next(m[name] for m in split if name in m)
        d_in, d_out = shapes["lora_A"].shape[1], shapes["lora_B"].shape[0]
        a_blocks, b_blocks = [], []
        for mods, r, s in zip(split, ranks, scales):
            if name in mods:
                a_blocks.append(mods[name]["lora_A"])
                b_blocks.append(mods[name]["lora_B"] * s)
            else:
                a_blocks.append(torch.zeros(r, d_in))
                b_blocks.append(torch.zeros(d_out, r))
        out[f"{name}.lora_A.weight"] = torch.cat(a_blocks, 0).contiguous()
        out[f"{name}.lora_B.weight"] = torch.cat(b_blocks, 1).contiguous()
    config = dict(configs[1])
    config.update(r=sum(ranks), lora_alpha=sum(ranks), lora_dropout=0.0,
                  target_modules=sorted(set(configs[0]["target_modules"]) | set(configs[1]["target_modules"])),
                  base_model_name_or_path=configs[0].get("base_model_name_or_path") or config.get("base_model_name_or_path"))
    target.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2))
