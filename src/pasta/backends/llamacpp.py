"""Start llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) as a subprocess, for the remote backend's
end-to-end test and benchmark. `scripts/setup.sh` builds it from source into `.venv-llamacpp`.

    with llama_server(gguf_path) as base_url:      # e.g. http://127.0.0.1:PORT/v1
        RemoteInterpreter(RemoteConfig(base_url=base_url)).generate("...")
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from ..subprocesses import free_port, stop

DEFAULT_PYTHON = Path(__file__).resolve().parents[3] / ".venv-llamacpp" / "bin" / "python"


def llamacpp_python() -> Path:
    """The interpreter that has llama-cpp-python: $PASTA_LLAMACPP_PYTHON, else the repository's .venv-llamacpp."""
    return Path(os.environ.get("PASTA_LLAMACPP_PYTHON", DEFAULT_PYTHON))


@contextlib.contextmanager
def llama_server(gguf: str | Path, *, alias: str = "model", n_ctx: int = 8192, threads: int = 1,
                 log: str | Path | None = None, python: str | Path | None = None,
                 timeout_s: float = 120.0) -> Iterator[str]:
    """Serve `gguf` on a free loopback port; yields the base URL (".../v1"); stops the server afterwards."""
    python = Path(python or llamacpp_python())
    if not python.is_file():
        raise FileNotFoundError(f"{python}: no llama-cpp-python here; `bash scripts/setup.sh --llamacpp` builds it into .venv-llamacpp "
                                "(or set PASTA_LLAMACPP_PYTHON)")
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_ctx", str(n_ctx), "--model_alias", alias]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                httpx.get(base + "/models", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama.cpp server not ready after {timeout_s:.0f} s") from None
                time.sleep(0.2)
        yield base
    finally:
        stop(proc)
        if log:
            out.close()
