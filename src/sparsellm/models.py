"""LLaMA-style model presets, built as Hugging Face ``LlamaForCausalLM`` with an untied head."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 32000

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} must be divisible by heads {self.heads}")


PRESETS: dict[str, Preset] = {
    # the paper's shapes (58M confirmed from the released configs; 162M / 468M reconstructed)
    "58m": Preset(512, 6, 8, 2048),
    "162m": Preset(768, 12, 12, 3072),
    "468m": Preset(1024, 24, 16, 4096),
    "1b": Preset(2048, 16, 8, 8192),
    # tiny CPU sizes (vocab is replaced by the tokenizer's); head dim 16
    "nano": Preset(32, 2, 2, 96),
    "micro": Preset(64, 2, 4, 192),
    "mini": Preset(96, 3, 6, 256),
    "small": Preset(128, 4, 8, 352),
    "base": Preset(192, 4, 12, 512),
    "large": Preset(256, 6, 16, 704),
}


_CUSTOM = re.compile(r"^h(\d+)-l(\d+)-i(\d+)(?:-d(\d+))?$")


def resolve_preset(preset: str | Preset) -> Preset:
    """A preset name, or a custom shape ``h{hidden}-l{layers}-i{intermediate}[-d{head_dim}]`` (head dim 16
    unless given: ``h256-l8-i704-d64`` has 4 heads of 64, which suits GPU attention kernels better)."""
    if isinstance(preset, Preset):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    m = _CUSTOM.match(preset)
    if m:
        h, l, i = map(int, m.groups()[:3])
        d = int(m.group(4) or 16)
        if d < 1 or h % d or h < d or l < 1 or i < 1:
            raise ValueError(f"custom shape {preset!r}: hidden must be a positive multiple of the head dim ({d}), "
                             "layers and intermediate >= 1")
        return Preset(h, l, h // d, i)
    raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)} or h<hidden>-l<layers>-i<intermediate>")


def prunable_count(preset: str | Preset, vocab_size: int) -> int:
    """Linear parameters (attention, MLP, untied head) of a preset, in closed form."""
    p = resolve_preset(preset)
    return p.layers * (4 * p.hidden * p.hidden + 3 * p.hidden * p.intermediate) + vocab_size * p.hidden


def llama_config(preset: str | Preset, vocab_size: int | None = None, max_seq_len: int = 2048) -> LlamaConfig:
    preset = resolve_preset(preset)
    return LlamaConfig(
        vocab_size=vocab_size or preset.vocab,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_model(preset: str | Preset, vocab_size: int | None = None, max_seq_len: int = 2048,
                seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = llama_config(preset, vocab_size, max_seq_len)
    model = LlamaForCausalLM(cfg)
    return model


def describe(preset: str, vocab_size: int | None = None) -> dict:
    """Parameter counts without materializing big models (meta device)."""
    cfg = llama_config(preset, vocab_size)
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    from .pruner import count_parameters
    pr, other = count_parameters(m)
    return {"preset": preset, "prunable_params": pr, "other_params": other, "total_params": pr + other}
