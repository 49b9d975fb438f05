"""The training layout is the inference layout: teacher-forced interpreter log-probs of an annotated response equal
the collator's log-probs from one full forward pass, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.layout import LayoutConfig
from pasta.train.collator import IGNORE, collate, layout_example, sequence_logprob, token_logprobs

TOK = ByteTokenizer()
ANSWERS = [
    'Tips:\n<promise topic="a" tokens="5"/><async>one two three</async> and <promise topic="b" tokens="3"/>'
    '<async>beta</async><sync/>Next <promise topic="c"/><async>gamma!</async>end',
    'x<promise topic="long" tokens="1"/><async>a much longer body than reserved</async>y<sync/>z',
    "no annotation at all",
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "mistral"])
@pytest.mark.parametrize("answer", range(len(ANSWERS)))
def test_collator_logprobs_equal_teacher_forced_interpreter(family, answer):
    config = LayoutConfig(reserve_factor=3.0, default_tokens=7)
    interp = Interpreter(tiny_model(family), TOK, layout_config=config)
    prompt = interp.prompt_ids("question?")
    result = interp.generate(prompt, teacher=ANSWERS[answer])
    inference = [lp for _, _, lp in result.logprobs]

    laid = layout_example(TOK, prompt, ANSWERS[answer], config, eos_id=TOK.eos_token_id)
    batch = collate([laid])
    with torch.no_grad():
        logp, valid = token_logprobs(interp.model, batch)
    training = logp[valid].tolist()
    assert len(training) == len(inference)
    assert training == pytest.approx(inference, abs=1e-4)
    assert sequence_logprob(interp.model, laid).item() == pytest.approx(sum(inference), abs=1e-3)


def test_labels_are_next_token_of_the_same_thread():
    answer = 'A<promise topic="t" tokens="2"/><async>xy</async>B<sync/>C'
    laid = layout_example(TOK, TOK.encode("q"), answer, LayoutConfig(), eos_id=TOK.eos_token_id)
    ids, labels = laid.input_ids.tolist(), laid.labels.tolist()
    # Everything learnable is labelled once: main text + tags + EOS, chunk body + close tag (not its forced <async>).
    learned = [label for label in labels if label != IGNORE]
    assert sorted(learned) == sorted(list(b'A<promise topic="t" tokens="2"/>B<sync/>C') + [TOK.eos_token_id] + list(b"xy</async>"))
    assert learned.count(TOK.eos_token_id) == 1
    # The forced "<async>" tokens are inputs, never targets (the interpreter inserts them).
    assert ids.count(ord("<")) > labels.count(ord("<"))
    # Mask: a subset of causal in cache order, every row sees itself.
    mask = laid.attention_mask
    assert torch.equal(mask & ~torch.tril(torch.ones_like(mask)), torch.zeros_like(mask))
    assert bool(mask.diagonal().all())


def test_collate_pads_safely():
    a = layout_example(TOK, TOK.encode("q"), "short", LayoutConfig(), eos_id=TOK.eos_token_id)
    b = layout_example(TOK, TOK.encode("q"), 'a much longer <promise topic="t"/><async>body</async>', LayoutConfig(),
                       eos_id=TOK.eos_token_id)
    batch = collate([a, b], pad_id=TOK.pad_token_id)
    model = tiny_model("llama")
    with torch.no_grad():
        logp, valid = token_logprobs(model, batch)
        alone, _ = token_logprobs(model, collate([a]))
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp[0, : len(a)], alone[0], atol=1e-5, rtol=1e-4)
    assert int(valid[0].sum()) == int((a.labels != IGNORE).sum())


def test_main_thread_loss_weight():
    """Weighted SFT loss = sum(w * ce) / sum(w), with w = main_weight on main-thread labels, 1 on chunk labels."""
    import torch.nn.functional as F

    from pasta.train.collator import IGNORE, causal_lm_loss, collate, forward_laid_out, layout_example

    tok = ByteTokenizer()
    model = tiny_model("llama")
    prompt = tok.encode("q")
    text = 'Tips:\n<promise topic="a" tokens="4"/><async>one</async>\n<sync/>ok'
    plain = layout_example(tok, prompt, text)
    heavy = layout_example(tok, prompt, text, main_weight=3.0)
    assert plain.weights is None and torch.equal(plain.labels, heavy.labels)
    labelled = heavy.labels != IGNORE
    chunk_labels = sum(1 for c in "one</async>")  # every token the chunk writes after its forced <async>
    assert int((heavy.weights[labelled] == 1.0).sum()) == chunk_labels
    assert bool((heavy.weights[labelled] == 3.0).any()) and float(heavy.weights[~labelled].abs().sum()) == 0
    batch = collate([heavy])
    with torch.no_grad():
        logits = forward_laid_out(model, batch).logits.float()[0]
        ce = F.cross_entropy(logits[labelled], heavy.labels[labelled], reduction="none")
        expected = (ce * heavy.weights[labelled]).sum() / heavy.weights[labelled].sum()
        assert float(causal_lm_loss(model, batch)) == pytest.approx(float(expected), rel=1e-5)
        assert float(causal_lm_loss(model, collate([plain]))) == pytest.approx(float(ce.mean()), rel=1e-5)


@pytest.mark.parametrize("answer", range(len(ANSWERS)))
def test_a_cut_off_answer_labels_no_end_of_answer(answer):
    """end_with_eos=False (the rejected side of a correction pair): the same layout, every label kept but the main
    thread's EOS, so its log-prob is the full answer's less log p(EOS) there."""
    model, prompt = tiny_model("llama"), TOK.encode("q")
    full = layout_example(TOK, prompt, ANSWERS[answer], LayoutConfig(), eos_id=TOK.eos_token_id)
    cut = layout_example(TOK, prompt, ANSWERS[answer], LayoutConfig(), eos_id=TOK.eos_token_id, end_with_eos=False)
    assert torch.equal(full.input_ids, cut.input_ids) and torch.equal(full.attention_mask, cut.attention_mask)
    changed = (full.labels != cut.labels).nonzero().flatten().tolist()
    assert len(changed) == 1 and full.labels[changed[0]] == TOK.eos_token_id and cut.labels[changed[0]] == IGNORE
    assert TOK.eos_token_id not in cut.labels.tolist()
    with torch.no_grad():
        logp, _ = token_logprobs(model, collate([full]))
        assert sequence_logprob(model, cut).item() == pytest.approx(
            sequence_logprob(model, full).item() - logp[0, changed[0]].item(), abs=1e-4)
