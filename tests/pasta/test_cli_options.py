"""The shared command-line options: one definition, the same meaning in every command."""

from __future__ import annotations

import pytest

from pasta.cli import build_parser
from pasta.cli_options import adapter_from_args, limits_from_args, sampling_from_args
from pasta.decoding import DecodeLimits

COMMANDS = {"generate": ["generate", "hi"], "serve": ["serve"], "eval": ["eval"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_threads_option_is_shared(command, capsys):
    parser = build_parser()
    assert parser.parse_args(COMMANDS[command]).threads == "auto"
    assert parser.parse_args(COMMANDS[command] + ["--threads", "3"]).threads == 3
    assert parser.parse_args(COMMANDS[command] + ["--threads", "torch"]).threads is None
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(COMMANDS[command] + ["--threads", "0"])
    assert exc.value.code == 2 and "threads must be a positive integer" in capsys.readouterr().err


def test_limits_sampling_and_adapter_from_args():
    parser = build_parser()
    args = parser.parse_args(["generate", "hi", "--max-new-tokens", "64", "--max-thread-tokens", "16",
                              "--max-threads", "2", "--temperature", "0.5", "--top-p", "0.9", "--seed", "7"])
    assert limits_from_args(args) == DecodeLimits(max_new_tokens=64, max_thread_tokens=16, max_threads=2)
    sampling = sampling_from_args(args)
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.5, 0.9, 7)
    assert sampling_from_args(args, seed=11).seed == 11
    assert adapter_from_args(args) is True
    assert adapter_from_args(parser.parse_args(["generate", "hi", "--no-adapter"])) is False
    assert adapter_from_args(parser.parse_args(["generate", "hi", "--adapter", "runs/x"])) == "runs/x"
    # The server takes max_tokens from each request: it has no --max-new-tokens, and its limits use the default.
    serve = parser.parse_args(["serve", "--max-thread-tokens", "32"])
    assert not hasattr(serve, "max_new_tokens")
    assert limits_from_args(serve).max_thread_tokens == 32
    # Each command keeps its own documented defaults.
    assert parser.parse_args(["eval"]).dtype == "float32" and parser.parse_args(["generate", "x"]).dtype == "auto"
    assert parser.parse_args(["eval"]).seed == 0 and parser.parse_args(["generate", "x"]).seed is None


def test_outline_topics_reach_every_commands_limits(tmp_path):
    """--outline-topics / --no-outline-topics reach the limits of generate, serve and eval; unset is None (the
    model's own convention, resolved by the interpreter)."""
    from pasta.eval.cli import config_from_args as eval_config_from_args
    from pasta.serve.cli import serve_config_from_args

    parser = build_parser()
    for flag, value in ((None, None), ("--outline-topics", True), ("--no-outline-topics", False)):
        extra = [flag] if flag else []
        assert limits_from_args(parser.parse_args(["generate", "hi", *extra])).outline_topics is value
        assert serve_config_from_args(parser.parse_args(["serve", *extra])).limits(8).outline_topics is value
        args = parser.parse_args(["eval", "--out", str(tmp_path), *extra])
        assert eval_config_from_args(args).limits.outline_topics is value


def test_penalties_reach_every_commands_limits(tmp_path):
    """--presence-penalty / --frequency-penalty reach generate, serve (its default for requests) and eval; unset is
    None (the model's recorded value); out of [-2, 2] is an error."""
    from pasta.serve.cli import serve_config_from_args

    for extra, value in (([], (None, None)), (["--presence-penalty", "0.5", "--frequency-penalty", "-1"], (0.5, -1.0))):
        found = _limits_of_every_command(extra, tmp_path)
        assert [(limits.presence_penalty, limits.frequency_penalty) for limits in found] == [value] * 3
    with pytest.raises(ValueError, match="presence_penalty must be a number in"):
        serve_config_from_args(build_parser().parse_args(["serve", "--presence-penalty", "3"]))


def _limits_of_every_command(extra: list[str], tmp_path) -> list:
    """The DecodeLimits that `pasta generate`, `pasta serve` (its requests' default) and `pasta eval` build from
    the same extra flags."""
    from pasta.eval.cli import config_from_args as eval_config_from_args
    from pasta.serve.cli import serve_config_from_args

    parser = build_parser()
    return [limits_from_args(parser.parse_args(["generate", "hi", *extra])),
            serve_config_from_args(parser.parse_args(["serve", *extra])).limits(8),
            eval_config_from_args(parser.parse_args(["eval", "--out", str(tmp_path), *extra])).limits]


def test_promise_draft_options_reach_every_commands_limits(tmp_path):
    """--no-draft-promises and --draft-tokens reach generate, serve and eval; unset: drafts on, the count as the
    model records (None); a negative count is an error."""
    from pasta.serve.cli import serve_config_from_args

    for extra, value in (([], (True, None)), (["--no-draft-promises", "--draft-tokens", "20"], (False, 20))):
        found = _limits_of_every_command(extra, tmp_path)
        assert [(limits.draft_promises, limits.draft_tokens) for limits in found] == [value] * 3
    with pytest.raises(ValueError, match="draft_tokens must be an integer"):
        serve_config_from_args(build_parser().parse_args(["serve", "--draft-tokens", "-1"]))


def test_every_config_validates_and_derives_through_decode_limits_and_sampling_params(tmp_path):
    from pasta.eval.runner import EvalConfig
    from pasta.serve.config import ServeConfig
    from pasta.train.pref import PrefConfig

    serve = ServeConfig(max_thread_tokens=64, max_threads=3)
    assert serve.limits(16) == DecodeLimits(max_new_tokens=16, max_thread_tokens=16, max_threads=3)
    assert serve.limits(500) == DecodeLimits(max_new_tokens=500, max_thread_tokens=64, max_threads=3)
    ev = EvalConfig(out=str(tmp_path), max_new_tokens=32, temperature=0.5, top_p=0.8, seed=4)
    assert ev.limits.max_new_tokens == 32 and (ev.sampling.temperature, ev.sampling.top_p, ev.sampling.seed) == (0.5, 0.8, 4)
    pref = PrefConfig(output_dir=str(tmp_path), max_threads=2, temperature=0.9, seed=3)
    assert pref.limits.max_threads == 2 and (pref.sampling.temperature, pref.sampling.seed) == (0.9, 3)
    for make in (lambda: EvalConfig(out=str(tmp_path), max_threads=0), lambda: PrefConfig(output_dir="x", max_threads=0)):
        with pytest.raises(ValueError, match="max_threads must be a positive integer"):
            make()
    for make in (lambda: EvalConfig(out=str(tmp_path), top_p=0.0), lambda: PrefConfig(output_dir="x", top_p=1.5)):
        with pytest.raises(ValueError, match="top_p must be in"):
            make()


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_quantize_reaches_the_interpreter(command, monkeypatch):
    """--quantize int4 is passed to Interpreter.from_pretrained by generate and serve; unset is None."""
    from pasta.cli import main
    from pasta.interpreter import Interpreter

    seen = []

    class Stop(Exception):
        pass

    def fake_from_pretrained(*args, **kwargs):
        seen.append(kwargs.get("quantize"))
        raise Stop

    monkeypatch.setattr(Interpreter, "from_pretrained", staticmethod(fake_from_pretrained))
    for extra, expected in (([], None), (["--quantize", "int4"], "int4")):
        with pytest.raises(Stop):
            main(COMMANDS[command] + ["--threads", "1"] + extra)
        assert seen[-1] == expected
    with pytest.raises(SystemExit):
        build_parser().parse_args(COMMANDS[command] + ["--quantize", "int3"])


def test_decoding_options_are_read_in_one_place_and_serve_and_eval_expose_them_all(tmp_path):
    from argparse import Namespace
    from dataclasses import fields

    from pasta.decoding import DECODING_OPTIONS
    from pasta.eval.runner import EvalConfig
    from pasta.serve.config import ServeConfig

    assert set(DECODING_OPTIONS) <= {f.name for f in fields(DecodeLimits)}
    chosen = {"outline_topics": True, "outline_terminated": True, "outline_no_repeat": True, "presence_penalty": 0.4, "frequency_penalty": 0.2,
              "draft_promises": False, "draft_tokens": 12}
    assert set(chosen) == set(DECODING_OPTIONS)  # a new option: give it a value here
    for config in (ServeConfig(**chosen), EvalConfig(out=str(tmp_path), **chosen)):
        limits = config.limits(64) if isinstance(config, ServeConfig) else config.limits
        assert {name: getattr(limits, name) for name in DECODING_OPTIONS} == chosen
    budgets = {"max_new_tokens": 9, "max_thread_tokens": 8, "max_threads": 2}
    assert DecodeLimits.from_options(Namespace(), **budgets) == DecodeLimits(**budgets)  # lacking: the defaults
    assert DecodeLimits.from_options(Namespace(draft_tokens=3), **budgets).draft_tokens == 3
