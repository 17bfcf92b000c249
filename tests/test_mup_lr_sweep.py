"""LR sweep plumbing: one tiny run per optimizer, best-lr selection and the table."""

import math

import pytest
import torch

from trainer.lr_sweep import best_lrs, markdown_table, train_one


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_train_one_learns_and_flags_divergence(optim):
    pattern = torch.arange(16).repeat(2, 2)  # learnable: the next token is the previous + 1
    train = torch.stack([pattern] * 20)
    val = [pattern]
    job = dict(parametrization="mup", optim=optim, width=32, lr=0.01, base_width=32, n_layers=1, warmup=3,
               grad_clip=1.0, seed=0)
    row = train_one(job, train, val, vocab=32)
    assert not row["diverged"] and row["val_loss"] < math.log(32) - 1.0


def test_best_lr_skips_diverged_and_table_marks_it():
    rows = [dict(parametrization="mup", optim="adamw", width=w, lr=lr, val_loss=loss, diverged=div)
            for w in (32, 64)
            for lr, loss, div in ((0.01, 2.0, False), (0.02, 1.5, False), (0.04, float("nan"), True))]
    best = best_lrs(rows)
    assert best[("mup", "adamw", 32)] == (0.02, 1.5) and best[("mup", "adamw", 64)] == (0.02, 1.5)
    table = markdown_table(rows)
    assert "| adamw | μP | 64 | 2.000 | **1.500** | div | 0.02 |" in table
