"""Decoding backends other than the local interpreter: `openai` drives any OpenAI-compatible completions server."""

from .openai import RemoteConfig, RemoteInterpreter, RemoteResult

__all__ = ["RemoteConfig", "RemoteInterpreter", "RemoteResult"]
