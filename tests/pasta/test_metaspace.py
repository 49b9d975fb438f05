"""SentencePiece-style (Metaspace) tokenizers, built here: the dummy prefix space must not leak into forced pieces.
Teacher forcing reproduces the annotated text exactly, the forced program decodes back to each thread's text, and
the training collator's labels spell the same text."""

from __future__ import annotations

import pytest
import torch
from tiny import SAMPLE_TEXT, tiny_model

from pasta.forcing import _adds_prefix_space, encode_piece, forced_program
from pasta.interpreter import Interpreter
from pasta.lang import to_structure

ANNOTATED = ('Tips:\n<promise topic="sleep" tokens="10"/><async>1. Sleep eight hours.</async>\n'
             '<promise topic="food" tokens="10"/><async>2. Eat vegetables.</async>\n<sync/>In short, be kind.')


def metaspace_tokenizer(legacy: bool):
    """legacy: Llama-2's normalizer form (prepend "▁", spaces -> "▁"); else the Metaspace pre-tokenizer (Mistral)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = sorted(set(SAMPLE_TEXT + ANNOTATED + "Give tips.ab\n§。") | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    tok.train_from_iterator([SAMPLE_TEXT, ANNOTATED] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.fixture(params=[False, True], ids=["metaspace", "legacy-llama2"])
def tok(request):
    return metaspace_tokenizer(request.param)


def test_the_tokenizer_really_adds_a_prefix_space(tok):
    assert _adds_prefix_space(tok)
    naive = tok.encode("Tips:", add_special_tokens=False) + tok.encode("<sync/>", add_special_tokens=False)
    assert _decode(tok, naive) != "Tips:<sync/>"  # the bug this guards against
    assert _decode(tok, encode_piece(tok, "Tips:") + encode_piece(tok, "<sync/>")) == "Tips:<sync/>"


def test_forced_program_decodes_to_each_threads_text(tok):
    program = forced_program(tok, ANNOTATED)
    structure = to_structure(ANNOTATED)
    assert _decode(tok, program.main) == "".join(structure.main_thread_pieces())
    assert [_decode(tok, c) for c in program.chunks] == [f"<async>{c.body}</async>" for c in structure.chunks]


def test_teacher_forcing_reproduces_the_text(tok):
    model = tiny_model("llama", vocab=max(len(tok), 259))
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.bos_token_id = tok.eos_token_id, tok.bos_token_id
    interp = Interpreter(model, tok)
    prompt = [tok.bos_token_id] + encode_piece(tok, "Give tips.")
    for mode in ("async", "sequential"):
        result = interp.generate(prompt, teacher=ANNOTATED, mode=mode)
        assert result.annotated == ANNOTATED, mode
    assert "Sleep eight hours." in result.text and " <" not in result.text


def test_collator_trains_on_the_same_tokens(tok):
    from pasta.train.collator import IGNORE, layout_example

    prompt = [tok.bos_token_id] + encode_piece(tok, "Give tips.")
    laid = layout_example(tok, prompt, ANNOTATED, eos_id=tok.eos_token_id)
    labels = [int(t) for t in laid.labels if t != IGNORE]
    program = forced_program(tok, ANNOTATED, eos_id=tok.eos_token_id)
    opening = len(encode_piece(tok, "<async>"))  # a chunk's opening tag is fed, not predicted
    expected = program.main + [t for chunk in program.chunks for t in chunk[opening:]]
    assert sorted(labels) == sorted(expected)
