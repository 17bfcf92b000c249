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

from trainer.config.base import ConfigError
from trainer.config.curriculum import Phase, parse_curriculum


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
