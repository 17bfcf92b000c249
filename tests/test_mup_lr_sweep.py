"""LR sweep plumbing: one tiny run per optimizer, best-lr selection and the table."""

import math

import pytest
import torch

from trainer.studies.lr_sweep import best_lrs, markdown_table, train_one

PATTERN = torch.arange(16).repeat(2, 2)  # learnable: the next token is the previous + 1


def job(optim: str, lr: float, grad_clip: float = 1.0) -> dict:
    return dict(parametrization="mup", optim=optim, width=32, lr=lr, base_width=32, n_layers=1, warmup=3,
                grad_clip=grad_clip, seed=0)


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_train_one_learns(optim):
    row = train_one(job(optim, 0.01), torch.stack([PATTERN] * 20), [PATTERN], vocab=32)
    assert not row["diverged"] and row["val_loss"] < math.log(32) - 1.0


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_train_one_flags_divergence(optim):
    """An lr 100x the one that learns, unclipped: the loss climbs past 1.5x its first value, the run is
    marked diverged and gets no validation loss (so the sweep cannot pick it)."""
    row = train_one(job(optim, 1.0, grad_clip=1e9), torch.stack([PATTERN] * 20), [PATTERN], vocab=32)
    assert row["diverged"] and math.isnan(row["val_loss"]), row


def test_best_lr_skips_diverged_and_table_marks_it():
    rows = [dict(parametrization="mup", optim="adamw", width=w, lr=lr, val_loss=loss, diverged=div)
            for w in (32, 64)
            for lr, loss, div in ((0.01, 2.0, False), (0.02, 1.5, False), (0.04, float("nan"), True))]
    best = best_lrs(rows)
    assert best[("mup", "adamw", 32)] == (0.02, 1.5) and best[("mup", "adamw", 64)] == (0.02, 1.5)
    table = markdown_table(rows)
    assert "| adamw | μP | 64 | 2.000 | **1.500** | div | 0.02 |" in table
