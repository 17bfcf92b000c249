"""The pure parsers of token counts and of the curriculum string (no torch, no data).

    >>> parse_tokens("2B")
    2000000000
    >>> [str(p) for p in parse_curriculum("128:2M,256:inf")]
    ['128:2000000', '256:inf']

What a phase means for the data (micro-batch size, the phase of a step) is ``trainer/data/curriculum.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trainer.config.base import ConfigError

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_TOKENS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGBT]?)\s*$", re.IGNORECASE)


def parse_tokens(text: str | int, key: str = "train.tokens") -> int:
    """``"2B"`` -> 2_000_000_000 (K/M/B/T are powers of 1000); ``"inf"`` -> ``math.inf``.

    Raises ``ConfigError`` naming ``key`` for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{key}: token count must be >= 0, got {text}")
        return text
    s = str(text).strip()
    if s.lower() in ("inf", "infinity"):
        return math.inf  # type: ignore[return-value]
    m = _TOKENS_RE.match(s)
    if not m:
        raise ConfigError(f"{key}: cannot parse token count {text!r}; write e.g. 500M, 2B, 1.5T or inf")
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value != int(value):
        raise ConfigError(f"{key}: token count {text!r} is not a whole number of tokens")
    return int(value)


@dataclass(frozen=True)
class Phase:
    """One curriculum phase: ``seq_len`` while global tokens seen < ``until`` (``math.inf`` for the last)."""

    index: int
    seq_len: int
    until: float

    def __str__(self) -> str:
        return f"{self.seq_len}:{'inf' if self.until == math.inf else self.until}"


def parse_curriculum(text: str, key: str = "data.curriculum") -> list[Phase]:
    """Parse ``"LEN:UNTIL,...,LEN:inf"``; checks the syntax, the order and the open-ended last phase."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{key}: empty schedule; write e.g. 256:inf or 128:2M,256:inf")
    phases: list[Phase] = []
    for i, part in enumerate(parts):
        length, sep, until = part.partition(":")
        if not sep:
            raise ConfigError(f"{key}: phase {part!r} must look like LEN:UNTIL_TOKENS (e.g. 512:500M or 2048:inf)")
        try:
            seq_len = int(length)
        except ValueError:
            raise ConfigError(f"{key}: sequence length {length!r} in phase {part!r} is not an integer") from None
        if seq_len < 2:
            raise ConfigError(f"{key}: sequence length must be >= 2, got {seq_len} in phase {part!r}")
        limit = parse_tokens(until, key)
        if phases and not limit > phases[-1].until:
            raise ConfigError(f"{key}: token thresholds must increase; {part!r} ends at or before "
                              f"the previous phase ({phases[-1]})")
        if limit == 0:
            raise ConfigError(f"{key}: phase {part!r} ends at 0 tokens and would never run")
        phases.append(Phase(i, seq_len, limit))
    if phases[-1].until != math.inf:
        raise ConfigError(f"{key}: the last phase must be open-ended (LEN:inf), got {parts[-1]!r}; "
                          f"append e.g. ',{phases[-1].seq_len}:inf'")
    return phases
