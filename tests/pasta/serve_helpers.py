"""Test helpers: a tiny model that never ends early, and a real `pasta serve` app on a free loopback port."""

from __future__ import annotations

import dataclasses
import threading
import time

import torch
import uvicorn
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.serve.app import create_app
from pasta.serve.cli import uvicorn_config
from pasta.serve.config import ServeConfig
from pasta.subprocesses import free_port


def no_eos_interpreter(seed: int = 0) -> Interpreter:
    """A tiny random Llama whose EOS logit is pushed down, so every request runs to its max_tokens: lengths
    (and so timings of concurrency tests) do not depend on where a random model happens to stop."""
    torch.set_num_threads(1)
    model = tiny_model("llama", seed=seed)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight.data.copy_(old.weight.data)
    head.bias.data.zero_()
    head.bias.data[ByteTokenizer.eos_token_id] = -1e4
    model.lm_head = head
    return Interpreter(model, ByteTokenizer(), name="tiny-llama")


def wait_idle(client) -> dict:
    """/health once nothing is in flight and every cache page is back (bounded: ~20 s at most)."""
    for _ in range(400):
        health = client.get("/health").json()
        if health["in_flight"] == 0 and health["kv_pages_used"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"server never went idle (a request or its pages leaked): {health}")


class RunningServer:
    """`create_app` under uvicorn in a background thread, on 127.0.0.1."""

    def __init__(self, interpreter: Interpreter, config: ServeConfig) -> None:
        self.port = free_port()
        self.app = create_app(interpreter, config)
        # The same uvicorn settings as `pasta serve` (graceful-shutdown bound included).
        config = dataclasses.replace(config, host="127.0.0.1", port=self.port)
        self.server = uvicorn.Server(uvicorn_config(self.app, config, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            time.sleep(0.025)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
