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
