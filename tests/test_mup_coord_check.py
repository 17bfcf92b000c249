"""Coordinate check: under muP the logits' scale after 3 steps is width-independent, under SP it grows."""

from __future__ import annotations

import csv

import pytest

from trainer.studies.coord_check import coord_records, main, scale_at, update_ratios, update_records

WIDTHS = [64, 128, 256]


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_logit_scale_transfers_under_mup_and_grows_under_sp(optim):
    rows = coord_records(WIDTHS, optim=optim, steps=3)
    mup = [scale_at(rows, "mup", w, 3) / scale_at(rows, "mup", WIDTHS[0], 3) for w in WIDTHS]
    sp = [scale_at(rows, "sp", w, 3) / scale_at(rows, "sp", WIDTHS[0], 3) for w in WIDTHS]
    assert 0.5 <= mup[-1] <= 2.0, f"muP logits ratio widest/narrowest {mup}"
    assert sp[-1] >= 2.0 and sp == sorted(sp), f"SP logits ratio should grow with width: {sp}"


def test_main_writes_csv_and_png(tmp_path):
    out = tmp_path / "coord"
    assert main(["--widths", "32,64", "--steps", "1", "--out", str(out), "--optim", "adamw"]) == 0
    with open(f"{out}_adamw.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["parametrization"] for r in rows} == {"mup", "sp"}
    assert {r["layer"] for r in rows} >= {"embedding", "block0.out", "block1.mlp", "logits"}
    assert (tmp_path / "coord_adamw.png").stat().st_size > 10_000


def test_one_step_update_is_width_independent_under_mup_adamw():
    """One AdamW step: the part of dW x aligned with the step's inputs is width-independent under
    muP (all hidden matrices and the readout) and grows with width under SP; the unaligned part
    (the coord check's finite-width decline) falls like 1/sqrt(width) under muP."""
    rows = update_records([64, 256], optim="adamw")
    aligned, unaligned = update_ratios(rows, "mup", "aligned"), update_ratios(rows, "mup", "unaligned")
    assert len(aligned) >= 12 and "readout" in aligned, aligned
    assert all(0.75 <= r <= 1.33 for r in aligned.values()), f"muP aligned dW x, width 256 / 64: {aligned}"
    assert all(0.35 <= r <= 0.7 for r in unaligned.values()), f"muP unaligned dW x, 256 / 64: {unaligned}"
    sp = update_ratios(rows, "sp", "aligned")
    assert all(r >= 2.5 for r in sp.values()), f"SP aligned dW x should grow with width: {sp}"


def test_one_step_update_is_width_independent_under_mup_muon():
    moved = update_ratios(update_records([64, 256], optim="muon", parametrizations=("mup",)), "mup", "moved")
    assert len(moved) >= 12 and all(0.75 <= r <= 1.33 for r in moved.values()), f"muP Muon dW x, 256 / 64: {moved}"
