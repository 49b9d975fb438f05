"""scripts/install_adapter.py: a further round keeps every earlier round's records, and never overwrites them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_adapter.py"
spec = importlib.util.spec_from_file_location("install_adapter", SCRIPT)
install_adapter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install_adapter)


def _run(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.ones(2, 2)}, folder / "adapter_model.safetensors")
    for name in install_adapter.RECORDS:
        content = json.dumps({"base_model_name_or_path": "/cache/x"}) if name == "adapter_config.json" else tag
        (folder / name).write_text(content)
    return folder


def test_second_round_keeps_stage1_and_round1_records(tmp_path):
    dest = tmp_path / "default-adapter"
    install_adapter.install(_run(tmp_path / "r16", "r16"), dest)
    (dest / "README.md").write_text("card")
    install_adapter.install(_run(tmp_path / "r17", "r17"), dest, keep_as="stage1")
    install_adapter.install(_run(tmp_path / "r18", "r18"), dest, keep_as="round1")
    assert (dest / "sft_config.json").read_text() == "r18"
    assert (dest / "stage1_sft_config.json").read_text() == "r16"
    assert (dest / "round1_sft_config.json").read_text() == "r17"
    assert (dest / "round1_training_log.csv").read_text() == "r17"
    assert (dest / "README.md").read_text() == "card"
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"
    # A plain install (a fresh Stage 1) keeps no earlier round's records.
    install_adapter.install(_run(tmp_path / "fresh", "fresh"), dest)
    assert not list(dest.glob("stage1_*")) and not list(dest.glob("round1_*"))


def test_reusing_a_prefix_is_refused_before_anything_is_touched(tmp_path):
    dest = tmp_path / "default-adapter"
    install_adapter.install(_run(tmp_path / "a", "a"), dest)
    install_adapter.install(_run(tmp_path / "b", "b"), dest, keep_as="stage1")
    with pytest.raises(SystemExit, match="already keeps stage1_"):
        install_adapter.install(_run(tmp_path / "c", "c"), dest, keep_as="stage1")
    assert (dest / "sft_config.json").read_text() == "b" and (dest / "stage1_sft_config.json").read_text() == "a"


def _pref_round(out: Path, tag: str) -> Path:
    adapter = out / "round-1" / "adapter"
    adapter.mkdir(parents=True)
    save_file({"lora_A": torch.ones(2, 2, dtype=torch.float32)}, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/x", "r": 16}))
    for name in ("pasta_layout.json", "pasta_decoding.json"):
        (adapter / name).write_text(tag)
    (out / "pref_config.json").write_text(tag)
    (out / "round-1" / "done.json").write_text(tag)
    (out / "round-1" / "train_log.jsonl").write_text(tag)
    return adapter


def test_a_stage2_round_installs_with_its_own_records_and_keeps_the_round_before(tmp_path):
    dest = tmp_path / "default-adapter"
    install_adapter.install(_run(tmp_path / "r16", "r16"), dest)
    install_adapter.install(_run(tmp_path / "r17", "r17"), dest, keep_as="stage1")
    install_adapter.install(_pref_round(tmp_path / "pref", "r21"), dest, keep_as="round1")
    names = {p.name for p in dest.iterdir()}
    assert {"pref_config.json", "pref_done.json", "pref_train_log.jsonl", "pasta_decoding.json"} <= names
    assert (dest / "pref_done.json").read_text() == "r21" and (dest / "pasta_decoding.json").read_text() == "r21"
    assert "sft_config.json" not in names  # the replaced round's records are kept under its prefix only
    assert (dest / "round1_sft_config.json").read_text() == "r17"
    assert (dest / "stage1_sft_config.json").read_text() == "r16"
    assert load_file(dest / "adapter_model.safetensors")["lora_A"].dtype == torch.bfloat16
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == "default"
    # a further round keeps the Stage-2 round's records too
    install_adapter.install(_run(tmp_path / "r23", "r23"), dest, keep_as="round2")
    assert (dest / "round2_pref_done.json").read_text() == "r21"


def test_an_unfinished_round_is_refused(tmp_path):
    adapter = _pref_round(tmp_path / "pref", "x")
    (adapter.parent / "train_log.jsonl").unlink()
    with pytest.raises(SystemExit, match="train_log.jsonl"):
        install_adapter.install(adapter, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_decoding_conventions_are_recorded_over_the_runs_own(tmp_path):
    dest = tmp_path / "default-adapter"
    run = _run(tmp_path / "r17", "r17")
    (run / "pasta_decoding.json").write_text('{"outline_topics": true}')
    install_adapter.install(run, dest, decoding=install_adapter.parse_decoding(["presence_penalty=0.5"]))
    assert json.loads((dest / "pasta_decoding.json").read_text()) == {"outline_topics": True, "presence_penalty": 0.5}
    with pytest.raises(SystemExit, match="presence_penalty must be a number in"):
        install_adapter.install(run, dest, decoding={"presence_penalty": 7})
    assert json.loads((dest / "pasta_decoding.json").read_text()) == {"outline_topics": True}
    for bad in (["presence_penalty"], ["presence=0.5"], ["presence_penalty=half"]):
        with pytest.raises(SystemExit, match="--decoding"):
            install_adapter.parse_decoding(bad)
