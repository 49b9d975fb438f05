"""Stage 2 (BoNBoN preference optimization): the loss against a direct computation on a tiny model, pair selection,
and a resumable two-round run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.data.sources import Example
from pasta.eval.judge import OrderResult
from pasta.interpreter import Interpreter
from pasta.train.pref import PrefConfig, PrefTrainer, bonbon_loss, score_sample, select_pair

torch.set_num_threads(1)
TOK = ByteTokenizer()
BEST = 'Tips: <promise topic="a" tokens="4"/><async>eat</async><promise topic="b"/><async>sleep</async><sync/>ok'
WORST = "Tips: eat, sleep, ok"


def _engine_logprob(model, prompt_ids, annotated) -> float:
    """Oracle: the inference engine's own log-probs of the answer under teacher forcing (no collator involved)."""
    result = Interpreter(model, TOK).generate(prompt_ids, teacher=annotated)
    assert result.annotated == annotated
    return sum(lp for _, _, lp in result.logprobs)


def _trainer(tmp_path, **kw) -> PrefTrainer:
    config = PrefConfig(output_dir=str(tmp_path / "pref"), judge="none", **kw)
    trainer = PrefTrainer(config, tiny_model(seed=5), TOK)
    torch.manual_seed(1)
    with torch.no_grad():  # a LoRA that is not zero, so the policy differs from the reference
        for name, p in trainer.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return trainer


def test_bonbon_formula():
    lb, lw, rb, rw = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5])
    # margin = (-10 + 12) - (-11 + 11.5) = 1.5; target 1/(2*0.25) = 2; IPO = 0.25; NLL = 10
    assert float(bonbon_loss(lb, lw, rb, rw, alpha=0.3, beta=0.25)) == pytest.approx(0.3 * 10 + 0.7 * 0.25)
    assert float(bonbon_loss(lb, lw, rb, rw, alpha=1.0, beta=0.25)) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        bonbon_loss(lb, lw, rb, rw, alpha=1.5, beta=0.1)
    with pytest.raises(ValueError):
        bonbon_loss(lb, lw, rb, rw, alpha=0.5, beta=0.0)


def test_bonbon_loss_on_tiny_model_matches_direct_computation(tmp_path):
    trainer = _trainer(tmp_path, alpha=0.4, beta=0.2)
    prompt = "Give tips."
    ids = trainer.prompt_ids(prompt)
    policy_net = trainer.policy.get_base_model()  # LoRA layers active
    lb, lw = _engine_logprob(policy_net, ids, BEST), _engine_logprob(policy_net, ids, WORST)
    with trainer.policy.disable_adapter():
        rb, rw = _engine_logprob(policy_net, ids, BEST), _engine_logprob(policy_net, ids, WORST)
    assert abs(lb - rb) > 1e-3  # the policy really differs from the reference
    expected = 0.4 * (-lb) + 0.6 * ((lb - lw) - (rb - rw) - 1 / (2 * 0.2)) ** 2

    best, worst = trainer.laid_out(prompt, BEST), trainer.laid_out(prompt, WORST)
    assert float(trainer.policy_logprob(best).detach()) == pytest.approx(lb, abs=1e-3)
    assert float(trainer.reference_logprob(best)) == pytest.approx(rb, abs=1e-3)
    ref = torch.tensor([[trainer.reference_logprob(best), trainer.reference_logprob(worst)]])
    trainer.policy.train()
    loss = trainer.pair_loss([(best, worst)], ref)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    loss.backward()
    grads = [p.grad for n, p in trainer.policy.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    base_grads = [p.grad for n, p in trainer.policy.named_parameters() if "lora" not in n]
    assert all(g is None for g in base_grads)  # LoRA: the base stays frozen (it is the reference)


def test_score_and_pair_selection():
    s = [{"speedup": 1.0, "quality": 0.9}, {"speedup": 2.0, "quality": 0.1}, {"speedup": 1.2, "quality": 0.5}]
    assert score_sample(2.0, 0.1, 1.0) == (2.1, 0.0)
    best, worst = select_pair(s, lam=1.0)  # scores 1.9, 2.1, 1.7
    assert (best["speedup"], worst["speedup"]) == (2.0, 1.2)
    best, worst = select_pair(s, lam=8.0)  # 8.2, 2.8, 5.2
    assert (best["speedup"], worst["speedup"]) == (1.0, 2.0)
    best, worst = select_pair(s, lam=math.inf)  # quality only
    assert (best["quality"], worst["quality"]) == (0.9, 0.1)
    assert select_pair([{"speedup": 1.0, "quality": None}] * 3, lam=1.0) is None  # all tie: no pair
    with pytest.raises(ValueError):
        PrefConfig(output_dir="x", n_samples=1)


class ShorterWins:
    name = "shorter-wins"

    def compare(self, instruction, output_a, output_b):
        return OrderResult(1.0 if len(output_b) < len(output_a) else 0.0, "text")


def test_two_rounds_resumable(tmp_path, monkeypatch):
    examples = [Example(f"ex{i}", f"Prompt {i}", "unused", "test") for i in range(2)]
    kw = dict(n_samples=3, rounds=2, temperature=1.0, top_p=1.0, max_new_tokens=12, max_thread_tokens=6,
              learning_rate=1e-2, batch_size=1, grad_accum=1, lam=2.0)
    config = PrefConfig(output_dir=str(tmp_path / "pref"), judge="local", **kw)
    trainer = PrefTrainer(config, tiny_model(seed=5), TOK, judge=ShorterWins())
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_B" in n}
    report = trainer.run(examples)
    out = tmp_path / "pref"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for k in (1, 2):
        samples = [json.loads(x) for x in (out / f"round-{k}" / "samples.rank0.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in samples) == ["ex0", "ex1"]
        assert all(len(r["samples"]) == 3 for r in samples)
        for r in samples:
            for s in r["samples"]:
                a = s["answer_stats"]  # random tiny models: answers are cut by the token cap -> runaway -> 0
                ok = a["complete"] and not a["guards"] and not a["repeated_topics"] and not a["duplicate_chunks"]
                expected = (a["plain_tokens"] + 1) / max(1, s["critical_path"]) if ok else 0.0
                assert s["speedup"] == pytest.approx(expected)
                assert s["quality"] in (0.0, 0.5, 1.0)
        pairs = [json.loads(x) for x in (out / f"round-{k}" / "pairs.jsonl").read_text().splitlines()]
        for p in pairs:
            assert {"prompt", "chosen", "rejected"} <= set(p)
            assert p["score_chosen"] > p["score_rejected"]
        assert (out / f"round-{k}" / "adapter" / "adapter_model.safetensors").is_file()
        assert (out / f"round-{k}" / "done.json").is_file()
    after = {n: p.detach() for n, p in trainer.policy.named_parameters() if "lora_B" in n}
    assert any(not torch.equal(before[n], after[n]) for n in before)  # training moved the weights

    # Rerun: every round is done; nothing is sampled again and the final weights are restored.
    calls = []
    monkeypatch.setattr(PrefTrainer, "sample_round", lambda self, *a: calls.append(a) or [])
    again = PrefTrainer(config, tiny_model(seed=5), TOK, judge=ShorterWins())
    report2 = again.run(examples)
    assert calls == [] and report2["rounds"] == report["rounds"]
    restored = {n: p.detach() for n, p in again.policy.named_parameters() if "lora_B" in n}
    assert all(torch.allclose(restored[n], after[n]) for n in after)


def test_round_adapter_folds_in_the_stage1_adapter(tmp_path):
    """Stage 2 trains a LoRA on the merged stage-1 model; the saved `adapter` must reproduce that policy when loaded
    on the base model alone (as `pasta eval --adapter` does), and resuming must restore the delta."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from pasta.train.pref import combine_lora_adapters

    # a stage-1 adapter on a subset of the modules (the delta adapts all seven: the zero-block path is exercised)
    torch.manual_seed(3)
    stage1 = get_peft_model(tiny_model(seed=5), LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj",
                                                                                               "down_proj"]))
    with torch.no_grad():
        for name, p in stage1.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    stage1.save_pretrained(tmp_path / "stage1")
    merged = PeftModel.from_pretrained(tiny_model(seed=5), str(tmp_path / "stage1")).merge_and_unload()

    config = PrefConfig(output_dir=str(tmp_path / "pref"), judge="none")
    trainer = PrefTrainer(config, merged, TOK, stage1_adapter=tmp_path / "stage1")
    with torch.no_grad():
        for name, p in trainer.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trainer.save(tmp_path / "pref" / "round-1")
    ids = torch.tensor([trainer.prompt_ids("Give tips.")])
    with torch.no_grad():
        want = trainer.policy(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(tiny_model(seed=5), str(tmp_path / "pref" / "round-1" / "adapter"))
        got = loaded.merge_and_unload()(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-5)
        # without the fold, the round's LoRA alone on the base model is a different model
        delta_only = PeftModel.from_pretrained(tiny_model(seed=5), str(tmp_path / "pref" / "round-1" / "stage2-delta"))
        assert not torch.allclose(delta_only.merge_and_unload()(input_ids=ids).logits, want, atol=1e-3)
    # resume restores the delta (not the combined adapter) into a fresh trainer on the merged model
    merged2 = PeftModel.from_pretrained(tiny_model(seed=5), str(tmp_path / "stage1")).merge_and_unload()
    again = PrefTrainer(config, merged2, TOK, stage1_adapter=tmp_path / "stage1")
    again.load_round(tmp_path / "pref" / "round-1")
    with torch.no_grad():
        assert torch.allclose(again.policy(input_ids=ids).logits, want, atol=1e-5)
    with pytest.raises(ValueError):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
        combine_lora_adapters(tmp_path / "bad", tmp_path / "stage1", tmp_path / "out")


def test_a_runaway_sample_scores_below_any_plain_answer():
    from types import SimpleNamespace

    from pasta.train.pref import sample_speedup

    def stats(**kw):
        base = dict(complete=True, guards=[], repeated_topics=0, duplicate_chunks=0, plain_tokens=99)
        return SimpleNamespace(**{**base, **kw})

    assert sample_speedup(stats(), 50) == pytest.approx(2.0)  # tags are not counted: plain tokens only
    for bad in (dict(complete=False), dict(guards=["repeated_topic: x"]), dict(repeated_topics=1),
                dict(duplicate_chunks=2)):
        assert sample_speedup(stats(**bad), 10) == 0.0 < sample_speedup(stats(plain_tokens=9), 10)


def _pairs_file(tmp_path, rows) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_offline_pairs_train_one_round_without_sampling(tmp_path, monkeypatch):
    """`pairs=` (pasta train pref --pairs): the round trains on the file's pairs; a cut-off rejected side labels
    no end of answer."""
    rows = [{"prompt": "Give tips.", "chosen": BEST, "rejected": "Tips: eat, sle", "rejected_truncated": True},
            {"prompt": "More tips.", "chosen": BEST, "rejected": WORST},
            {"prompt": "Cut tips.", "chosen": "Tips: <promise", "rejected": WORST, "chosen_truncated": True}]
    trainer = _trainer(tmp_path, pairs=_pairs_file(tmp_path, rows), learning_rate=1e-2, grad_accum=1)
    monkeypatch.setattr(PrefTrainer, "sample_round", lambda *a: pytest.fail("offline pairs are not sampled"))
    seen = []
    real_loss = PrefTrainer.pair_loss

    def spy(self, pair_laid, ref):
        seen.extend(pair_laid)
        return real_loss(self, pair_laid, ref)

    monkeypatch.setattr(PrefTrainer, "pair_loss", spy)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_B" in n}
    report = trainer.run([])
    summary = report["rounds"][0]
    assert (summary["pairs"], summary["prompts"]) == (3, 3)
    eos = TOK.eos_token_id
    rejected_labels = sorted((w.labels.tolist() for _, w in seen), key=len)
    assert eos not in rejected_labels[0] and all(eos in labels for labels in rejected_labels[1:])
    chosen_labels = sorted((b.labels.tolist() for b, _ in seen), key=len)
    assert eos not in chosen_labels[0] and all(eos in labels for labels in chosen_labels[1:])  # "Tips: <promise" cut
    after = {n: p.detach() for n, p in trainer.policy.named_parameters() if "lora_B" in n}
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert (tmp_path / "pref" / "round-1" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("rows, message", [
    (["{oops"], "pairs.jsonl:1: not JSON"),
    ([{"prompt": "p", "chosen": "a"}], "pairs.jsonl:1: 'rejected' must be a non-empty string"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"}],
     "pairs.jsonl:2: chosen and rejected are the same text"),
    ([{"prompt": "p", "chosen": "a", "rejected": "b", "rejected_truncated": "yes"}], "must be true or false"),
    ([], "no pairs"),
])
def test_bad_pairs_files_say_which_line(tmp_path, rows, message):
    from pasta.train.pref import load_pairs

    with pytest.raises(ValueError, match=message):
        load_pairs(_pairs_file(tmp_path, rows))
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="one round"):
        PrefConfig(output_dir="x", pairs="p.jsonl", rounds=2)
