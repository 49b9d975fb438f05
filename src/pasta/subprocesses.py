"""Stopping a child server process: SIGTERM, a bounded wait, then SIGKILL (never a hang, never an orphan)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
    """Terminate `proc`; kill it if it has not exited after `timeout` seconds. Returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
