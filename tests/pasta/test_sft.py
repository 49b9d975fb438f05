"""Stage 1 SFT end to end on a tiny saved model: it learns, saves an adapter with its layout, and resuming from a
checkpoint gives the same weights as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from tiny import tiny_hf_folder

from pasta.interpreter import Interpreter
from pasta.train.sft import SFTConfig, read_rows, train_sft

ROWS = [
    {"prompt": f"Give two tips number {i}.",
     "annotated": f'Tips:\n<promise topic="a" tokens="10"/><async>1. Sleep eight hours.</async>\n'
                  f'<promise topic="b" tokens="10"/><async>2. Eat vegetables.</async>\n<sync/>In short, be kind.'}
    for i in range(6)
] + [{"prompt": "Say hi.", "annotated": "The quick brown fox."}] * 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    model_dir = tiny_hf_folder(root / "model")
    data = root / "data.jsonl"
    with open(data, "w") as f:
        for row in ROWS:
            f.write(json.dumps(row) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"prompt": "x", "annotated": "<async>bad</async>"}) + "\n")
    return root, model_dir, data


def _config(root, model_dir, data, name, **kw):
    base = dict(data=[str(data)], output_dir=str(root / name), model=str(model_dir), lora=True, lora_r=4,
                learning_rate=5e-3, batch_size=2, max_steps=6, annotated_fraction=None, save_steps=3,
                logging_steps=1, seed=1, lora_dropout=0.0)
    base.update(kw)
    return SFTConfig(**base)


def test_bad_rows_are_skipped_with_their_line(setup, caplog):
    _, _, data = setup
    rows = read_rows([str(data)])
    assert len(rows) == len(ROWS)
    assert any(":9: not JSON" in r.message for r in caplog.records)
    assert any(":10: annotated response is not valid" in r.message for r in caplog.records)


def test_sft_learns_and_saves_a_usable_adapter(setup):
    root, model_dir, data = setup
    out = train_sft(_config(root, model_dir, data, "run"))
    log = [float(line.split(",")[1]) for line in (out / "training_log.csv").read_text().splitlines()[1:]]
    assert len(log) == 6 and log[-1] < log[0]
    assert (out / "loss.png").is_file()
    assert json.loads((out / "pasta_layout.json").read_text())["reserve_factor"] == 2.0
    # Nothing outlined; every promise says tokens="10": the count drafts propose for a list's first promise.
    assert json.loads((out / "pasta_decoding.json").read_text()) == {"outline_topics": False, "draft_tokens": 10}
    interp = Interpreter.from_pretrained(str(model_dir), dtype="float32", adapter=str(out))
    assert interp.decoding_defaults == {"outline_topics": False, "draft_tokens": 10}
    result = interp.generate("Give two tips number 3.", teacher=ROWS[0]["annotated"])
    assert result.annotated == ROWS[0]["annotated"]


class _InterruptAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_resume_equals_uninterrupted(setup):
    root, model_dir, data = setup
    full = train_sft(_config(root, model_dir, data, "full", max_steps=6))
    with pytest.raises(KeyboardInterrupt):  # killed right after the checkpoint at step 3
        train_sft(_config(root, model_dir, data, "part", max_steps=6), callbacks=[_InterruptAfterSave()])
    assert not (root / "part" / "adapter_model.safetensors").exists()
    resumed = train_sft(_config(root, model_dir, data, "part", max_steps=6, resume=True))
    a = load_file(str(full / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    untouched = load_file(str(root / "part" / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors"))
    assert any(not torch.allclose(untouched[k], b[k]) for k in b)  # the resumed run really trained further


def test_rerunning_a_finished_run_trains_nothing(setup):
    root, model_dir, data = setup
    config = _config(root, model_dir, data, "done", max_steps=2, save_steps=1)
    out = train_sft(config)
    weights = (out / "adapter_model.safetensors").read_bytes()
    log = (out / "training_log.csv").read_text()
    again = train_sft(_config(root, model_dir, data, "done", max_steps=2, save_steps=1, resume=True))
    assert again == out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]  # no step 3
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    assert (out / "training_log.csv").read_text() == log
    longer = train_sft(_config(root, model_dir, data, "done", max_steps=4, save_steps=1, resume=True))
    assert (longer / "adapter_model.safetensors").read_bytes() != weights  # more steps asked: it trains on


def test_plain_examples_can_come_from_their_own_files(setup, tmp_path):
    from transformers import AutoTokenizer

    from pasta.train.sft import build_examples

    root, model_dir, data = setup
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": f"q{i}", "annotated": f"own answer {i}"}) + "\n" for i in range(5)))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    config = _config(root, model_dir, data, "mix", plain_data=[str(plain)], annotated_fraction=0.6, max_examples=10)
    examples, stats = build_examples(config, tok, read_rows(config.data), read_rows(config.plain_data))
    assert stats["examples_with_chunks"] == 6 and stats["examples"] == 10  # 6 annotated, 4 plain (60/40)
    texts = [tok.decode(e.input_ids) for e in examples]
    assert sum("own answer" in t for t in texts) == 4
    assert not any("quick brown fox" in t for t in texts)  # plain rows of --data are not used
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _config(root, model_dir, data, "x", plain_data=["nowhere.jsonl"])


def test_a_model_trained_on_outlined_answers_records_outline_topics(setup, tmp_path):
    from transformers import AutoTokenizer

    from pasta.train.sft import build_examples, decoding_conventions

    root, model_dir, _ = setup
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    outlined = [dict(row, annotated=row["annotated"].replace("Tips:\n", "Tips:\nOverview: a; b.\n\n"))
                for row in ROWS]
    data = tmp_path / "outlined.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in outlined[:3] + ROWS[3:]))
    config = _config(root, model_dir, data, "outlined")
    _, stats = build_examples(config, tok, read_rows(config.data))
    assert stats["examples_with_outline"] == 3 and stats["examples_with_chunks"] == 6
    # Half the forked examples are outlined; all their promises say tokens="10".
    assert decoding_conventions(stats) == {"outline_topics": True, "draft_tokens": 10}
    _, stats = build_examples(config, tok, read_rows(config.data)[2:])
    assert decoding_conventions(stats) == {"outline_topics": False, "draft_tokens": 10}  # 1 of 4 outlined
    # The same outlines terminated ("Overview: a; b;"): recorded, so the outline guard keeps their last ';'.
    from pasta.lang import terminated_outlines

    data.write_text("".join(json.dumps(dict(row, annotated=terminated_outlines(row["annotated"]))) + "\n"
                            for row in outlined[:3] + ROWS[3:]))
    _, stats = build_examples(config, tok, read_rows(config.data))
    assert stats["examples_with_terminated_outline"] == 3
    assert decoding_conventions(stats) == {"outline_topics": True, "outline_terminated": True, "draft_tokens": 10}
    # No count shared by 90% of the promises: none recorded (the model writes the first count itself).
    assert "draft_tokens" not in decoding_conventions({"promise_tokens": {"10": 8, "20": 2}})
    assert decoding_conventions({"promise_tokens": {"30": 9, "20": 1}})["draft_tokens"] == 30
    # An outline line with no promise after it (a plain answer) is not an outlined fork; nor is a promise before it.
    from pasta.lang import is_outlined

    assert is_outlined(outlined[0]["annotated"]) and not is_outlined(ROWS[0]["annotated"])
    assert not is_outlined("Tips:\nOverview: a; b.\n\n1. Sleep.\n2. Eat.")
    assert not is_outlined('<promise topic="a" tokens="5"/><async>x</async><sync/>\nOverview: a; b.\n\nDone.')
    assert decoding_conventions({"examples_with_chunks": 0, "examples_with_outline": 2}) == {"outline_topics": False}


def test_a_run_can_continue_from_a_trained_adapter(setup):
    root, model_dir, data = setup
    first = train_sft(_config(root, model_dir, data, "first", max_steps=3, save_steps=3))
    start = load_file(str(first / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in start.items())  # trained: B is no longer zero
    # A tiny learning rate: the continued adapter stays where the first one ended (a fresh one would have B = 0).
    cont = train_sft(_config(root, model_dir, data, "cont", max_steps=1, learning_rate=1e-12,
                             init_adapter=str(first), lora_r=16))
    after = load_file(str(cont / "adapter_model.safetensors"))
    assert after.keys() == start.keys()
    for key in start:
        torch.testing.assert_close(after[key], start[key], atol=1e-6, rtol=1e-5)  # rank 4 kept, not lora_r=16
    grown = train_sft(_config(root, model_dir, data, "grown", max_steps=2, init_adapter=str(first)))
    assert any(not torch.allclose(load_file(str(grown / "adapter_model.safetensors"))[k], start[k]) for k in start)
    with pytest.raises(ValueError, match="full fine-tune"):
        _config(root, model_dir, data, "x", lora=False, init_adapter=str(first))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        _config(root, model_dir, data, "x", init_adapter=str(root))


def test_unlikelihood_run_lays_out_repeats_and_records_them(setup, tmp_path):
    root, model_dir, _ = setup
    outlined = [dict(row, annotated=row["annotated"].replace("Tips:\n", "Tips:\nOverview: ab; ac.\n\n"))
                for row in ROWS[:6]]
    data = tmp_path / "outlined.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in outlined))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": "p", "kind": "outline_repeat", "rejected": "Tips:\nOverview: ab; cd; ab;"},
        {"prompt": "p", "kind": "outline_repeat", "rejected": "Tips:\nOverview: ab; cd;"},  # not a repeat: dropped
    ]))
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": "p", "kind": "outline_repeat", "chosen": outlined[0]["annotated"],
         "rejected": "Tips:\nOverview: ab; ac; ab;"},
        {"prompt": "p", "kind": "outline_repeat", "chosen": outlined[0]["annotated"],
         "rejected": "Tips:\nOverview: ab"},  # a prefix of the chosen side: nothing to correct, dropped
    ]))
    out = train_sft(_config(root, model_dir, data, "ul", max_steps=2, unlikelihood=1.0, repeat_data=[str(pairs)],
                            correction_data=[str(corrections)]))
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["correction_examples"] == 1
    stats["examples"] -= 1
    stats["unlikelihood_slots"] -= 1
    # Each outline has one copy slot (" ac" after " a": "b" would copy item 1) and the repeat its three tokens.
    # (The tiny model's tokenizer spells by bytes or byte pairs: count from the laid-out examples, not by hand.)
    assert stats["repeat_examples"] == 1 and stats["examples"] == 7
    assert stats["unlikelihood_slots"] >= 6 + 1
    assert json.loads((out / "sft_config.json").read_text())["unlikelihood"] == 1.0


def test_cli_passes_unlikelihood_options(monkeypatch, tmp_path):
    import argparse

    from pasta.train import cli, sft

    seen = {}
    monkeypatch.setattr(sft, "train_sft", lambda config: seen.setdefault("config", config) and tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n")
    parser = argparse.ArgumentParser()
    cli.add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "sft", "--data", str(data), "--out", str(tmp_path / "o"),
                              "--unlikelihood", "0.5", "--repeat-data", str(data), "--no-unlikelihood-empty-items",
                              "--correction-data", str(data), "--correction-weight", "4",
                              "--correction-kinds", "outline_done"])
    assert args.func(args) == 0
    assert seen["config"].unlikelihood == 0.5 and seen["config"].repeat_data == [str(data)]
    assert seen["config"].unlikelihood_empty_items is False
    assert seen["config"].correction_data == [str(data)] and seen["config"].correction_weight == 4.0
    assert seen["config"].correction_kinds == ["outline_done"]
