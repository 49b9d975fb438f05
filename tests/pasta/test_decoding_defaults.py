"""A trained model's recorded decoding conventions (pasta_decoding.json) fill the DecodeLimits a request leaves
unset, and never override what a request sets."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter, decoding_defaults_for


def _loaded(tmp_path, content: str | None):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    if content is not None:
        (adapter / "pasta_decoding.json").write_text(content)
    return SimpleNamespace(adapter=str(adapter), path=str(tmp_path / "base"))


def test_conventions_are_read_from_beside_the_adapter(tmp_path):
    assert decoding_defaults_for(_loaded(tmp_path, '{"outline_topics": true}')) == {"outline_topics": True}


def test_no_file_means_no_conventions(tmp_path):
    assert decoding_defaults_for(_loaded(tmp_path, None)) == {}


@pytest.mark.parametrize("content, message", [
    ("{", "not JSON"),
    ("[true]", "expected a JSON object"),
    ('{"outline_topic": true}', "unknown decoding convention 'outline_topic'"),
    ('{"outline_topics": "yes"}', "outline_topics must be true or false"),
])
def test_a_bad_file_is_a_clear_error_naming_it(tmp_path, content, message):
    with pytest.raises(ValueError, match=message) as info:
        decoding_defaults_for(_loaded(tmp_path, content))
    assert "pasta_decoding.json" in str(info.value)


@pytest.mark.parametrize("asked, recorded, used", [
    (None, {"outline_topics": True}, True),  # unset: as the model was trained
    (None, {}, False),
    (False, {"outline_topics": True}, False),  # a request's choice wins
    (True, {}, True),
])
def test_limits_left_unset_take_the_models_conventions(asked, recorded, used):
    tok = ByteTokenizer()
    interp = Interpreter(tiny_model("llama", seed=0), tok, decoding_defaults=recorded)
    decoding = interp.start(interp.prompt_ids("hi"), limits=DecodeLimits(outline_topics=asked))
    assert decoding.limits.outline_topics is used
    assert interp.start(interp.prompt_ids("hi")).limits.outline_topics is bool(recorded.get("outline_topics"))
