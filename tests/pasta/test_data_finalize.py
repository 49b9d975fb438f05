"""Acceptance rules and normalization shared by the annotators."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pasta import lang
from pasta.data.annotate_llm import load_fewshot_examples
from pasta.data.finalize import (
    REJECT_REASONS,
    AnnotationRejected,
    FinalizeConfig,
    approx_token_count,
    finalize_annotation,
)

ORIGINAL = ("Tips:\n\n1. Sleep eight hours every night.\n2. Eat vegetables with every meal.\n\n"
            "In short, be kind to your body.")


def rejected(original: str, annotated: str, **kw) -> AnnotationRejected:
    with pytest.raises(AnnotationRejected) as err:
        finalize_annotation(original, annotated, **kw)
    assert err.value.reason in REJECT_REASONS
    return err.value


def test_accepts_and_rewrites_tokens_from_real_counts():
    ann = ('Tips:\n\n<promise topic="sleep" tokens="999"/><async>1. Sleep eight hours every night.</async>\n'
           '<promise topic=" eat   well " tokens="1"/><async>2. Eat vegetables with every meal.</async>\n\n'
           "<sync/>In short, be kind to your body.")
    out = finalize_annotation(ORIGINAL, ann, count_tokens=lambda s: 31)
    assert lang.strip_tags(out) == ORIGINAL
    s = lang.to_structure(out, strict=True)
    assert [(c.topic, c.tokens) for c in s.chunks] == [("sleep", 40), ("eat well", 40)]
    out = finalize_annotation(ORIGINAL, ann, count_tokens=lambda s: 31, config=FinalizeConfig(tokens_multiple=4))
    assert [c.tokens for c in lang.to_structure(out).chunks] == [32, 32]
    # default counter: an approximation of the body's length
    out = finalize_annotation(ORIGINAL, ann)
    assert [c.tokens for c in lang.to_structure(out).chunks] == [10, 10]
    assert approx_token_count("1. Sleep eight hours every night.") == 8  # words and punctuation


def test_whitespace_changes_are_repaired_onto_the_original():
    # The annotator collapsed the blank lines and re-indented; tags still land in the original text.
    ann = ('Tips:\n<promise topic="sleep"/><async>\n1. Sleep eight hours every night.\n</async>'
           '<promise topic="eat"/><async>2. Eat vegetables   with every meal.</async><sync/> '
           "In short, be kind to your body.")
    out = finalize_annotation(ORIGINAL, ann)
    assert lang.strip_tags(out) == ORIGINAL
    assert [c.body for c in lang.to_structure(out).chunks] == ["1. Sleep eight hours every night.",
                                                               "2. Eat vegetables with every meal."]
    assert "</async>\n\n<sync/>In short" in out


def test_code_fence_around_the_whole_answer_is_removed():
    ann = '```\n<promise topic="all" tokens="5"/><async>' + ORIGINAL + "</async><sync/>\n```"
    assert lang.strip_tags(finalize_annotation(ORIGINAL, ann)) == ORIGINAL


def test_no_promise_is_accepted_as_is():
    assert finalize_annotation(ORIGINAL, ORIGINAL + "\n") == ORIGINAL


def test_useless_syncs_are_dropped_and_tags_canonicalized():
    ann = ('<sync/>Tips:\n\n<promise tokens=5 topic=\'sleep\' extra="x"><async >1. Sleep eight hours every night.'
           '</async >\n<promise topic="eat"/><async>2. Eat vegetables with every meal.</async>\n\n<sync />'
           "In short, <sync/>be kind to your body.")
    out = finalize_annotation(ORIGINAL, ann)
    assert out == ('Tips:\n\n<promise topic="sleep" tokens="10"/><async>1. Sleep eight hours every night.</async>\n'
                   '<promise topic="eat" tokens="10"/><async>2. Eat vegetables with every meal.</async>\n\n'
                   "<sync/>In short, be kind to your body.")


@pytest.mark.parametrize("ann, reason, detail", [
    ("Tips:\n\n1. Sleep eight hours every night.\n2. Eat fruit with every meal.\n\nIn short, be kind to your body.",
     "text_changed", "'fruit"),
    ("Tips:\n\n1. Sleep eight hours every night.", "text_changed", "stops at word"),
    (ORIGINAL + " Extra words.", "text_changed", "adds 'Extra"),
    ('Tips: <promise topic="a"/><async>1. Sleep eight hours every night.\n2. Eat vegetables with every meal. '
     "In short, be kind to your body.", "malformed_tags", "unclosed-async"),
    ('Tips: <promise topic="a"/> 1. Sleep eight hours every night.\n2. Eat vegetables with every meal. '
     "In short, be kind to your body.", "malformed_tags", "promise-without-body"),
    ('Tips: <promise topic=""/><async>1. Sleep eight hours every night.</async>\n2. Eat vegetables with every '
     "meal. In short, be kind to your body.", "empty_topic", "empty"),
    ('Tips: <promise tokens="3"/><async>1. Sleep eight hours every night.</async>\n2. Eat vegetables with every '
     "meal. In short, be kind to your body.", "empty_topic", "without a topic"),
    ('Tips: <promise topic="x"/><async> </async>1. Sleep eight hours every night.\n2. Eat vegetables with every '
     "meal. In short, be kind to your body.", "empty_chunk", ""),
    ('Tips: <promise topic="' + "very " * 40 + '"/><async>1. Sleep eight hours every night.</async>\n2. Eat '
     "vegetables with every meal. In short, be kind to your body.", "topic_too_long", ""),
    ("   \n", "empty_output", ""),
])
def test_rejections(ann, reason, detail):
    err = rejected(ORIGINAL, ann)
    assert err.reason == reason
    assert detail in err.detail


def test_source_with_tags_is_rejected():
    assert rejected("Use <sync/> here.", "Use <sync/> here.").reason == "source_has_tags"
    assert rejected("Write <async foo> please", "Write <async foo> please").reason == "source_has_tags"


def test_fewshot_examples_are_valid_varied_and_seven():
    shots = load_fewshot_examples()
    assert len(shots) == 7
    chunks = [len(lang.to_structure(s.annotated, strict=True).chunks) for s in shots]
    assert chunks.count(0) == 1 and all(c >= 2 for c in chunks if c)  # exactly one "leave it alone" example
    for s in shots:
        assert s.prompt.strip() and s.why
        assert finalize_annotation(s.response, s.annotated) == s.annotated  # already canonical


_piece = st.sampled_from(["word", "two words", ".", "\n", "\n\n", "  ", "- item", "# head"])


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(_piece, min_size=2, max_size=30), cuts=st.lists(st.integers(0, 29), min_size=2, max_size=6),
       ws=st.sampled_from([" ", "\n", "", "\n\n"]))
def test_projection_keeps_the_original_exact(pieces, cuts, ws):
    """Tags wrapped around arbitrary spans, with whitespace perturbed, always project back exactly."""
    original = " ".join(pieces)
    bounds = sorted({min(c, len(pieces)) for c in cuts})
    if len(bounds) < 2:
        return
    a, b = bounds[0], bounds[-1]
    body = " ".join(pieces[a:b])
    if not body.strip():
        return
    ann = (ws.join(pieces[:a]) + ws + '<promise topic="t"/><async>' + ws + body + ws + "</async>" + ws + "<sync/>"
           + ws + " ".join(pieces[b:]))
    if ann.split() != original.split() and lang.strip_tags(ann).split() != original.split():
        return  # this perturbation glued words together: a real text change, covered above
    out = finalize_annotation(original, ann)
    assert lang.strip_tags(out) == original
    assert lang.to_structure(out).chunks[0].body.split() == body.split()
