"""PASTA: learned asynchronous decoding (Pasta-Lang, interpreter, training, evaluation, server)."""

from .decoding import DecodeLimits
from .interpreter import GenerationResult, Interpreter, RunStats
from .layout import LayoutConfig
from .sampling import SamplingParams

__all__ = ["DecodeLimits", "GenerationResult", "Interpreter", "LayoutConfig", "RunStats", "SamplingParams"]
__version__ = "0.1.0"
