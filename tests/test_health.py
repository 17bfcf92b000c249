"""Skipped-step bookkeeping and the loss-spike warning (trainer/run/health.py), and the schedule's
account of a changed run length (trainer/optim/schedule.py)."""

import math

from trainer.config.sections import TrainConfig
from trainer.optim.schedule import describe_change
from trainer.run.health import Health


def test_skips_count_and_consecutive_skips_diverge():
    h = Health(max_skipped=3)
    assert h.observe(2.0, 1.0) == "ok"
    assert h.observe(math.nan, None) == "skip" and h.observe(2.0, math.inf) == "skip"
    assert h.observe(2.0, 1.0) == "ok" and h.consecutive == 0  # a good step resets the run of skips
    assert [h.observe(math.inf, 1.0) for _ in range(3)] == ["skip", "skip", "diverged"]
    assert h.skipped == 5
    restored = Health(max_skipped=3)
    restored.load_state_dict(h.state_dict())
    assert restored.skipped == 5 and restored.consecutive == 3


def test_spike_warns_once_after_n_steps_and_spikes_do_not_raise_the_bar():
    h = Health(max_skipped=3, spike_factor=3.0, spike_steps=2)
    assert not any(h.spike(1.0) for _ in range(10))
    assert [h.spike(5.0) for _ in range(4)] == [False, True, False, False]
    assert h.running_mean < 1.01
    assert not h.spike(1.0) and not any(h.spike(5.0) for _ in range(3))  # once per run


def test_describe_change_per_schedule():
    wsd = TrainConfig(steps=6, schedule="wsd", decay_frac=0.2, warmup_steps=2)
    line = describe_change(wsd, 6, 20, 6)
    assert "stable phase to step 16" in line and "decays over steps 16-20" in line
    assert "0.1 -> 1" in line  # the finished run had decayed to min_lr_ratio; the longer one is stable again
    assert "re-stretched" in describe_change(TrainConfig(steps=6, schedule="cosine"), 6, 20, 6)
    assert "nothing to re-place" in describe_change(TrainConfig(steps=6, schedule="constant"), 6, 20, 6)
