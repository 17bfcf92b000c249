"""The sequence-length curriculum: ``"512:500M,1024:2B,2048:inf"`` -> phases, by global tokens.

A phase ``LEN:UNTIL`` trains at sequence length ``LEN`` while fewer than ``UNTIL`` global
tokens have been consumed. Tokens per optimizer step stay constant across phases, so the
micro-batch size follows the phase: ``tokens_per_step / (world_size * grad_accum * LEN)``.
The phase of a step is decided from the global token count *before* the step (the same
number on every rank), so every rank changes shape at the same optimizer step; a threshold
that is not a multiple of ``tokens_per_step`` takes effect at the first step that starts at
or past it.

All functions here are pure; ``validate_curriculum`` is what the CLI calls before any
worker starts, so a bad schedule exits with one line naming the key.

    >>> phases = parse_curriculum("128:2M,256:inf")
    >>> phase_at(phases, 3_000_000).seq_len
    256
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from trainer.configlib import ConfigError

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


def micro_batch_size(tokens_per_step: int, world_size: int, grad_accum: int, seq_len: int) -> int:
    """Rows per micro-batch on each rank so that one optimizer step holds ``tokens_per_step`` tokens."""
    per_row = world_size * grad_accum * seq_len
    if tokens_per_step % per_row:
        raise ConfigError(
            f"train.tokens_per_step={tokens_per_step} is not divisible by world_size({world_size}) x "
            f"train.grad_accum({grad_accum}) x seq_len({seq_len}) from data.curriculum; choose a multiple of "
            f"{per_row} (e.g. {max(1, round(tokens_per_step / per_row)) * per_row})")
    return tokens_per_step // per_row


def check_partitions(partitions: int, world_size: int) -> None:
    """Rank r of W serves data partitions r, r+W, ...: W must divide ``data.partitions``."""
    if partitions % world_size:
        divisors = [d for d in range(1, partitions + 1) if partitions % d == 0]
        raise ConfigError(f"data.partitions={partitions} is not divisible by the number of processes ({world_size}); "
                          f"launch one of {divisors} processes or set data.partitions to a multiple of {world_size} "
                          "(a checkpoint keeps the partitions it was saved with)")


def validate_curriculum(text: str, tokens_per_step: int, grad_accum: int, world_size: int,
                        max_seq_len: int | None) -> list[Phase]:
    """Parse and check the schedule against the run; returns the phases or raises ``ConfigError``."""
    phases = parse_curriculum(text)
    for p in phases:
        if max_seq_len is not None and p.seq_len > max_seq_len:
            raise ConfigError(f"data.curriculum: sequence length {p.seq_len} exceeds the model's max positions "
                              f"({max_seq_len}); lower it or raise model.max_seq_len")
        micro_batch_size(tokens_per_step, world_size, grad_accum, p.seq_len)
    return phases


def phase_at(phases: list[Phase], tokens_seen: int) -> Phase:
    """The phase that the step starting at global ``tokens_seen`` trains in."""
    for p in phases:
        if tokens_seen < p.until:
            return p
    return phases[-1]
