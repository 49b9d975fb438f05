"""Facts about a Hugging Face model config that more than one module reads (kept here so none of them imports
another just for a helper)."""

from __future__ import annotations


def sliding_window(config) -> tuple[int, bool] | None:
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
