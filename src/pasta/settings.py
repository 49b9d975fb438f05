"""Decode settings of a flat config (the CLI's and the config files' shape): one way to turn its fields
`max_new_tokens`, `max_thread_tokens`, `max_threads`, `temperature`, `top_p`, `seed` into the interpreter's own
`DecodeLimits` and `SamplingParams`, which also validate them."""

from __future__ import annotations

from .decoding import DecodeLimits
from .sampling import SamplingParams


class DecodeSettings:
    """Mixin for dataclass configs that carry the six decode fields."""

    max_new_tokens: int
    max_thread_tokens: int
    max_threads: int
    temperature: float
    top_p: float
    seed: int | None

    @property
    def limits(self) -> DecodeLimits:
        # the decoding options this config has fields for; the others as the model records (promise drafts on)
        return DecodeLimits.from_options(self, max_new_tokens=self.max_new_tokens,
                                         max_thread_tokens=self.max_thread_tokens, max_threads=self.max_threads)

    @property
    def sampling(self) -> SamplingParams:
        """The sampler (callers that seed per prompt or per sample replace `seed`)."""
        return SamplingParams(self.temperature, self.top_p, self.seed)

    def validate_decode_settings(self) -> None:
        self.limits, self.sampling  # noqa: B018 - the constructors raise ValueError on bad values
