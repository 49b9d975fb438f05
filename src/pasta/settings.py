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
        # outline_topics, penalties, draft_tokens: None (as the model records) unless the config has the field and
        # sets it; promise drafts on unless it turns them off
        return DecodeLimits(self.max_new_tokens, self.max_thread_tokens, self.max_threads,
                            outline_topics=getattr(self, "outline_topics", None),
                            presence_penalty=getattr(self, "presence_penalty", None),
                            frequency_penalty=getattr(self, "frequency_penalty", None),
                            draft_promises=getattr(self, "draft_promises", True),
                            draft_tokens=getattr(self, "draft_tokens", None))

    @property
    def sampling(self) -> SamplingParams:
        """The sampler (callers that seed per prompt or per sample replace `seed`)."""
        return SamplingParams(self.temperature, self.top_p, self.seed)

    def validate_decode_settings(self) -> None:
        self.limits, self.sampling  # noqa: B018 - the constructors raise ValueError on bad values
