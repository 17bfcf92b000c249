"""The curriculum's pure parts: token counts, schedule parsing, validation, phase lookup."""

import math

import pytest

from trainer.config.base import ConfigError
from trainer.config.curriculum import parse_curriculum, parse_tokens
from trainer.data.curriculum import micro_batch_size, phase_at, validate_curriculum


def test_parse_tokens_suffixes():
    assert parse_tokens("2B") == 2_000_000_000
    assert parse_tokens("500M") == 500_000_000
    assert parse_tokens("1.5k") == 1500
    assert parse_tokens("3T") == 3 * 10**12
    assert parse_tokens("123") == 123
    assert parse_tokens(77) == 77
    assert parse_tokens("inf") == math.inf
    with pytest.raises(ConfigError, match="train.tokens"):
        parse_tokens("2X")
    with pytest.raises(ConfigError, match="whole number"):
        parse_tokens("1.00001K")


def test_parse_curriculum():
    phases = parse_curriculum("512:500M,1024:2B,2048:inf")
    assert [(p.index, p.seq_len, p.until) for p in phases] == [
        (0, 512, 500_000_000), (1, 1024, 2_000_000_000), (2, 2048, math.inf)]
    assert phase_at(phases, 0).seq_len == 512
    assert phase_at(phases, 499_999_999).seq_len == 512
    assert phase_at(phases, 500_000_000).seq_len == 1024
    assert phase_at(phases, 10**15).seq_len == 2048


@pytest.mark.parametrize("text, match", [
    ("512:2B,1024:500M,2048:inf", "must increase"),
    ("512:1M,1024:1M,2048:inf", "must increase"),
    ("512:500M,1024:2B", "open-ended"),
    ("512", "LEN:UNTIL"),
    ("abc:inf", "not an integer"),
    ("", "empty"),
    ("1:inf", ">= 2"),
])
def test_parse_curriculum_errors(text, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_curriculum(text)
    assert "data.curriculum" in str(e.value)


def test_validate_curriculum_against_run():
    assert len(validate_curriculum("128:2M,256:inf", 4096, 2, 2, 256)) == 2
    with pytest.raises(ConfigError, match="max positions"):
        validate_curriculum("128:2M,512:inf", 4096, 1, 1, 256)
    with pytest.raises(ConfigError, match="train.tokens_per_step") as e:
        validate_curriculum("96:2M,256:inf", 4096, 1, 2, 256)
    assert "data.curriculum" in str(e.value)


def test_micro_batch_size_keeps_tokens_per_step():
    for seq in (16, 32, 64):
        mb = micro_batch_size(1024, 2, 2, seq)
        assert mb * seq * 2 * 2 == 1024
