"""The model runner: one forward pass per step over one interleaved KV cache, for any Hugging Face causal LM.

Every step feeds the new tokens of all active threads together (a new thread's forced opening tokens included),
with their layout position ids and a custom 4D attention mask built from the layout's visibility rows. The cache
only ever grows by the fed tokens: a prefix is never copied per thread.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class StepInputs:
    token_ids: list[int]
    slots: list[int]
    positions: list[int]
    rows: list[torch.Tensor]  # per token: bool over slots [0..slot]
    logit_rows: list[int]  # indices into token_ids whose next-token logits are wanted


def _sliding_window(config) -> tuple[int, bool] | None:
    """(window, per_layer) or None. Two conventions exist in Hugging Face models: configs with `layer_types` (Gemma
    2/3, Qwen2/3, Cohere 2, GPT-OSS, ...) take a dict of masks keyed by layer type; configs without it (Mistral,
    Mixtral, Phi-3, Starcoder2, ...) apply `sliding_window` to every layer through one mask. Either way a 4-D mask
    we pass is used as given, so the window must be in it."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return (int(window), True) if "sliding_attention" in layer_types else None
    return int(window), False


def model_attention_mask(
    model: torch.nn.Module, mask: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What to pass as `attention_mask` for a visibility mask [B, 1, q, k] (bool, True = attend).

    Eager attention wants an additive float mask. Sliding windows are applied by *position*, since in a Pasta
    layout cache order is not position order: a dict by layer type for models with `layer_types` (Gemma 2/3,
    Qwen2 with `use_sliding_window`, ...), the windowed mask itself for models that window every layer (Mistral,
    Phi-3, ...).
    Used by the engine, the naive oracle and the training collator alike."""
    config = model.config
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def convert(m: torch.Tensor) -> torch.Tensor:
        m = m.to(device)
        if getattr(config, "_attn_implementation", "sdpa") == "eager":
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~m, torch.finfo(dtype).min)
        return m

    sliding = _sliding_window(config)
    if sliding is None:
        return convert(mask)
    window, per_layer = sliding
    q = q_positions.reshape(mask.shape[0], 1, -1, 1).to(mask.device)
    k = k_positions.reshape(mask.shape[0], 1, 1, -1).to(mask.device)
    windowed = mask & (q - k < window)  # by position: in a Pasta layout cache order is not position order
    if not per_layer:
        return convert(windowed)
    return {"full_attention": convert(mask), "sliding_attention": convert(windowed)}


class ModelRunner:
    """Wraps a causal LM; stateless apart from the model (each request owns its cache)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        # transformers >= 5 calls the cache `cache`; older releases `past_key_values`.
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self):
        from transformers import DynamicCache

        # No config: every layer keeps all its keys. A sliding-window cache layer would evict by slot order, which
        # is not position order in an interleaved layout; the window is applied in the mask instead.
        return DynamicCache()

    def _mask(self, rows: list[torch.Tensor], total: int) -> torch.Tensor:
        mask = torch.zeros(len(rows), total, dtype=torch.bool)
        for i, row in enumerate(rows):
            mask[i, : row.numel()] = row
        return mask

    @torch.inference_mode()
    def forward(self, cache, inputs: StepInputs, key_positions: list[int]) -> torch.Tensor:
        """Feed `inputs` (appended to `cache`); returns float32 logits [len(logit_rows), vocab].
        `key_positions` are the position ids of every slot so far (used for sliding-window layers)."""
        total = inputs.slots[-1] + 1
        mask = self._mask(inputs.rows, total)[None, None]
        attention_mask = model_attention_mask(
            self.model, mask, torch.tensor(inputs.positions), torch.tensor(key_positions[:total])
        )
        kwargs = {
            "input_ids": torch.tensor([inputs.token_ids], device=self.device),
            "position_ids": torch.tensor([inputs.positions], device=self.device),
            "attention_mask": attention_mask,
            self._cache_kwarg: cache,
            "use_cache": True,
            "logits_to_keep": torch.tensor(inputs.logit_rows, device=self.device),
        }
        out = self.model(**kwargs)
        return out.logits[0].float()


def cache_length(cache) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0
