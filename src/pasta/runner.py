"""The model runner: the one place that calls a Hugging Face causal LM (`call_model`).

The engine (each step over the shared slot cache), the naive oracle (a whole sequence, no cache) and the training
collator (a padded batch, with gradients) all go through `call_model`, so a position id or a mask convention is
written once. The visibility mask always comes from `pasta.layout`; this module only converts it to what the
model's attention implementation wants (an additive float mask for eager attention; sliding windows applied by
position).
"""

from __future__ import annotations

import inspect

import torch

from .llama_forward import LlamaForward
from .model_config import sliding_window


def model_attention_mask(
    model: torch.nn.Module, mask: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What to pass as `attention_mask` for a visibility mask [B, 1, q, k] (bool, True = attend).

    Eager attention wants an additive float mask. Sliding windows are applied by *position*, since in a Pasta
    layout cache order is not position order: a dict by layer type for models with `layer_types` (Gemma 2/3,
    Qwen2 with `use_sliding_window`, ...), the windowed mask itself for models that window every layer (Mistral,
    Phi-3, ...)."""
    config = model.config
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def convert(m: torch.Tensor) -> torch.Tensor:
        m = m.to(device)
        if getattr(config, "_attn_implementation", "sdpa") == "eager":
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~m, torch.finfo(dtype).min)
        return m

    sliding = sliding_window(config)
    if sliding is None:
        return convert(mask)
    window, per_layer = sliding
    q = q_positions.reshape(mask.shape[0], 1, -1, 1).to(mask.device)
    k = k_positions.reshape(mask.shape[0], 1, 1, -1).to(mask.device)
    windowed = mask & (q - k < window)  # by position: in a Pasta layout cache order is not position order
    if not per_layer:
        return convert(windowed)
    return {"full_attention": convert(mask), "sliding_attention": convert(windowed)}


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers >= 5 calls the cache argument `cache`; older releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def call_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    visibility: torch.Tensor,
    *,
    key_positions: torch.Tensor | None = None,
    cache=None,
    cache_argument: str | None = None,
    logits_to_keep: torch.Tensor | None = None,
):
    """One forward pass: `input_ids`/`position_ids` [B, q], `visibility` [B, 1, q, k] bool (True = attend) over the
    cache's slots plus these tokens (or over these tokens alone when there is no cache), `key_positions` [B, k] the
    position id of every key (default: `position_ids`, i.e. no cache). Returns the model's output."""
    attention_mask = model_attention_mask(
        model, visibility, position_ids, position_ids if key_positions is None else key_positions
    )
    kwargs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
              "use_cache": cache is not None}
    if cache is not None:
        kwargs[cache_argument or cache_kwarg(model)] = cache
    if logits_to_keep is not None:
        kwargs["logits_to_keep"] = logits_to_keep
    return model(**kwargs)


class ModelRunner:
    """Inference over a causal LM: float32 logits of the wanted rows, no gradients.

    `own_forward` (default): a Llama-family model runs through `pasta.llama_forward.LlamaForward`, which mirrors the
    Hugging Face forward pass op for op with fused projections; `own_forward=False` calls the module itself (the
    test oracle for the former). `quantize="int4"`: the same with 4-bit weights (`pasta.quantized`).
    `compile=True` runs the forward pass through `torch.compile(dynamic=True)`: symbolic shapes, so one compiled
    graph serves every step (any number of tokens, any cache length) without shape buckets. The first steps pay
    the compilation (minutes for a 135M model on a small CPU); exact against the oracle in fp32
    (tests/pasta/test_compile.py); in bf16 fused kernels round differently, so a greedy answer can differ."""

    def __init__(self, model: torch.nn.Module, *, compile: bool = False, own_forward: bool = True,
                 quantize: str | None = None) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self._cache_argument = cache_kwarg(model)
        self.compiled = compile
        # Llama-family models run through our own forward pass (same arithmetic, less per-step overhead; see
        # pasta.llama_forward); others, and compiled runs, through the Hugging Face module.
        self.quantize = quantize
        if quantize is not None:  # asked for explicitly: say why it cannot be done rather than decode unquantized
            if compile or not own_forward:
                raise ValueError("quantize needs our own forward pass (not compile, not own_forward=False)")
            self.own_forward = True
            self._target = LlamaForward(model, quantize)  # raises with the reason
        elif compile:
            self.own_forward = False
            self._target = torch.compile(model, dynamic=True)
        else:
            self.own_forward = own_forward and LlamaForward.supports(model)
            self._target = LlamaForward(model) if self.own_forward else model

    @torch.inference_mode()
    def forward(
        self,
        token_ids: list[int],
        positions: list[int] | torch.Tensor,
        visibility: torch.Tensor,
        *,
        key_positions: torch.Tensor | None = None,
        cache=None,
        logit_rows: list[int] | None = None,
    ) -> torch.Tensor:
        """Feed one sequence (batch 1): `visibility` [q, k]. Returns float32 logits [len(logit_rows) or q, vocab]."""
        device = self.device
        position_ids = torch.as_tensor(positions, dtype=torch.long)[None]
        out = call_model(
            self._target,
            torch.tensor([token_ids], device=device),
            position_ids.to(device),
            visibility[None, None],
            key_positions=None if key_positions is None else key_positions[None].to(device),
            cache=cache,
            cache_argument=self._cache_argument,
            logits_to_keep=None if logit_rows is None else torch.tensor(logit_rows, dtype=torch.long, device=device),
        )
        return out.logits[0].float()

    def causal(self, token_ids: list[int], logit_rows: list[int] | None = None) -> torch.Tensor:
        """Plain left-to-right text (no Pasta layout): float32 logits of `logit_rows` (default: every row)."""
        from .layout import Layout

        n = len(token_ids)
        return self.forward(token_ids, list(range(n)), Layout(n).full_mask(), logit_rows=logit_rows)
