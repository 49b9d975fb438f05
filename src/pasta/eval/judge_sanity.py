"""Judge sanity pairs: can this judge tell a real answer from an obviously bad one?

For a few prompts, a full answer (the baseline's) is compared with three answers any reader rejects: an empty
one, a one-word one, and a looping one (the answer's first sentence repeated). The judge is asked exactly as in
the evaluation (`judge_pair`, both orders). Its accuracy is the share of pairs where it prefers the full answer
(preference for the bad answer < 0.5; a tie counts half). A judge no better than chance on these cannot rank
PASTA against sequential decoding, and every report says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from .judge import judge_pair

__all__ = ["SanityResult", "bad_answers", "judge_sanity"]


def bad_answers(full: str) -> dict[str, str]:
    """Three answers worse than `full` by construction."""
    words = full.split()
    first_sentence = re.split(r"(?<=[.!?])\s", full.strip(), maxsplit=1)[0] or full.strip()
    return {
        "empty": "",
        "one_word": words[0] if words else "Yes",
        "looping": " ".join([first_sentence] * 12),
    }


@dataclass
class SanityResult:
    judge: str
    pairs: int
    accuracy: float | None
    by_kind: dict[str, float] = field(default_factory=dict)
    p_value: float | None = None  # one-sided binomial test against chance (0.5)
    better_than_chance: bool = False
    rows: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verdict(self) -> str:
        if self.accuracy is None:
            return f"judge `{self.judge}`: no sanity pair could be judged"
        word = "better than chance" if self.better_than_chance else "NOT better than chance: its win rates mean nothing"
        return (f"judge `{self.judge}` preferred the full answer in {100 * self.accuracy:.0f}% of {self.pairs} sanity "
                f"pairs (p = {self.p_value:.3g}): {word}")


def _binomial_p(successes: float, n: int) -> float:
    """P(X >= successes) for X ~ Binomial(n, 1/2) (half-successes from ties rounded down)."""
    k = math.floor(successes)
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def judge_sanity(judge, cases: list[tuple[str, str]], *, alpha: float = 0.05) -> SanityResult:
    """`cases`: (instruction, full answer) pairs; full answers that are empty are skipped."""
    rows = []
    for instruction, full in cases:
        if not full.strip():
            continue
        for kind, bad in bad_answers(full).items():
            pair = judge_pair(judge, instruction, full, bad)
            rows.append({"instruction": instruction, "kind": kind, "preference_for_bad": pair.preference,
                         "identical": pair.identical})
    scored = [r for r in rows if r["preference_for_bad"] is not None]
    if not scored:
        return SanityResult(judge=judge.name, pairs=0, accuracy=None, rows=rows)

    def correct(r: dict) -> float:
        p = r["preference_for_bad"]
        return 1.0 if p < 0.5 else 0.5 if p == 0.5 else 0.0

    total = sum(correct(r) for r in scored)
    by_kind = {}
    for kind in ("empty", "one_word", "looping"):
        mine = [r for r in scored if r["kind"] == kind]
        if mine:
            by_kind[kind] = sum(correct(r) for r in mine) / len(mine)
    p = _binomial_p(total, len(scored))
    return SanityResult(judge=judge.name, pairs=len(scored), accuracy=total / len(scored), by_kind=by_kind,
                        p_value=p, better_than_chance=p < alpha, rows=rows)
