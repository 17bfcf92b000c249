"""Elastic resume: a run continues at another number of processes on the same trajectory.

In one process: the data partitions give every step the same global rows at W = 1, 2 and 4, and a
position saved at one W continues at another; a shard re-cut by element ranges. Launched through
the real ``scaleout train``: W=2 for 2 steps (the uninterrupted W=2 ZeRO-2 run of conftest.py: its
own step-2 checkpoint), W=4 for 4 more (across the curriculum's phase change), W=1 for 4 more, at
ZeRO-2 and at ZeRO-1, against that uninterrupted run: the final fp32 master weights, optimizer state and EMA agree
within 1e-5 relative and every step's global batch is the same.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import COMMON, as_args  # tests/ is on sys.path (pytest rootdir-relative import)
from test_data_loader import data_cfg, write_corpus

from trainer.config import load_config
from trainer.config.base import ConfigError
from trainer.data.loader import TrainLoader
from trainer.data.tokenizer import build_tokenizer
from trainer.state.reshard import full_tensors, load_shards, overlaps, shard_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGS = ((2, 2), (4, 6), (1, 10))  # (processes, last step): W=2 to step 2, W=4 across the phase change, W=1
KINDS = ("master", "ema", "optim.momentum_buffer", "optim.exp_avg", "optim.exp_avg_sq")


# -- data order, in one process (W ranks simulated: the agreement collective is a no-op here) ------
def global_steps(loaders, n):
    """n steps of W rank loaders: per step the global rows ordered by global row number."""
    out = []
    for _ in range(n):
        rows = {}
        for ld in loaders:
            block = torch.cat([b["input_ids"] for b in ld.next_step()])
            rows.update({r: tuple(x.tolist()) for r, x in zip(ld.last_rows, block)})
        out.append([rows[r] for r in sorted(rows)])
        assert sorted(rows) == list(range(min(rows), min(rows) + len(rows)))  # no row missing
    return out


def make_loaders(cfg, tok, world):
    return [TrainLoader(cfg, tok, rank=r, world_size=world, tokens_per_step=256, grad_accum=2, max_seq_len=64)
            for r in range(world)]


def merged_state(loaders):
    sd = loaders[0].state_dict()
    return {**sd, "parts": {p: s for ld in loaders for p, s in ld.state_dict()["parts"].items()}}


def test_global_batches_do_not_depend_on_the_world_size_and_resume_at_another(tmp_path):
    write_corpus(tmp_path, n_files=8, docs_per_file=10)
    cfg = data_cfg(tmp_path, shuffle_buffer=8, partitions=4, curriculum="16:1024,32:inf")
    tok = build_tokenizer(cfg)
    want = global_steps(make_loaders(cfg, tok, 1), 12)  # crosses the phase change at step 5
    assert global_steps(make_loaders(cfg, tok, 2), 12) == want
    assert global_steps(make_loaders(cfg, tok, 4), 12) == want
    first = make_loaders(cfg, tok, 2)  # W=2 for 3 steps, W=4 for 4 (phase change), W=1 for 5
    got = global_steps(first, 3)
    second = make_loaders(cfg, tok, 4)
    for ld in second:
        ld.load_state_dict(merged_state(first))
    got += global_steps(second, 4)
    third = make_loaders(cfg, tok, 1)
    third[0].load_state_dict(merged_state(second))
    got += global_steps(third, 5)
    assert got == want
    odd = data_cfg(tmp_path, partitions=3)
    with pytest.raises(ConfigError, match=r"data.partitions=3 is not divisible by the number of processes \(2\)"):
        make_loaders(odd, tok, 2)


def test_overlaps_cut_saved_fragments_by_element_range():
    saved = [("a", 0, 10, 0), ("b", 0, 4, 10), ("a", 10, 6, 20)]
    assert overlaps(("a", 8, 5, 100), saved) == [(0, 8, 100, 2), (2, 20, 102, 3)]
    assert overlaps(("b", 3, 1, 0), saved) == [(1, 13, 0, 1)]
    assert overlaps(("c", 0, 1, 0), saved) == []


def _optimizer(weights: dict[str, torch.Tensor]):
    """A plain torch optimizer over whole parameters, as a DDP rank holds them (with Adam state)."""
    params = [torch.nn.Parameter(w.clone()) for w in weights.values()]
    opt = torch.optim.AdamW(params)
    for p in params:
        opt.state[p] = {"exp_avg": p.detach() * 2, "step": torch.tensor(3.0)}
    frags = [[(name, 0, w.numel(), 0)] for name, w in weights.items()]
    return opt, frags


def test_replicated_shards_count_once_and_gaps_are_named():
    """DDP: every rank saves every parameter whole. Loading W such shards fills each element once
    (no "covers 2N of N"), at any W; a shard set that misses part of a parameter names it."""
    weights = {"a": torch.arange(6.0).view(2, 3), "b": torch.arange(4.0) + 10}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    saved = [shard_state(*_optimizer(weights), shapes) for _ in range(2)]  # two DDP ranks
    for world in (1, 2):
        opt, frags = _optimizer({n: torch.zeros_like(w) for n, w in weights.items()})
        load_shards(saved[:world], opt, frags)
        for p, w in zip(opt.param_groups[0]["params"], weights.values()):
            assert torch.equal(p.detach(), w) and torch.equal(opt.state[p]["exp_avg"], w * 2)
    assert {n: t.tolist() for n, t in full_tensors(saved, "master").items()} == \
        {n: w.tolist() for n, w in weights.items()}
    half = shard_state(*_optimizer({"a": weights["a"].view(-1)[:4]}), shapes)
    half["fragments"] = [[("a", 0, 4, 0)]]  # a ZeRO-like piece: the first 4 of a's 6 elements, no b
    opt, frags = _optimizer({n: torch.zeros_like(w) for n, w in weights.items()})
    with pytest.raises(ValueError, match=r"covers 4 of 6 elements .*first gap in a"):
        load_shards([half], opt, frags)
    assert set(full_tensors([half], "master")) == set()  # the offline reader leaves a and b out


# -- launched runs ---------------------------------------------------------------------------------
def train(out_dir, world, ds_config, **overrides):
    keys = dict(COMMON, **{"dist.deepspeed_config": ds_config}, **overrides)
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=ROOT)
    launch = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml", "--num-processes", str(world)]
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", *(launch if world > 1 else []),
           "--train.out_dir", str(out_dir)]  # W=1: one lone process (DeepSpeed at world size 1)
    r = subprocess.run(cmd + as_args(keys), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:]
    ranks = [json.load(open(os.path.join(out_dir, "ranks", f"rank{i}.json"))) for i in range(world)]
    return r.stdout, ranks


@pytest.fixture(scope="module")
def reference(zero2_reference):
    """The uninterrupted W=2 ZeRO-2 run of conftest.COMMON (every checkpoint kept)."""
    return zero2_reference.out_dir, zero2_reference.summaries()


@pytest.fixture(scope="module", params=["zero2", "zero1"])
def elastic(request, tmp_path_factory, reference):
    """W=2 to step 2 (the reference run's own step-2 checkpoint: the same run up to there), then W=4
    to step 6 and W=1 to the end, under ZeRO-2 and under ZeRO-1 (a layout-free checkpoint does not
    care which stage wrote it): the logs and rank summaries of each leg."""
    (ref_out, ref_ranks), (_, first) = reference, LEGS[0]
    out = tmp_path_factory.mktemp(f"elastic_{request.param}")
    shutil.copytree(os.path.join(ref_out, "checkpoints", f"step_{first:06d}"),
                    os.path.join(out, "checkpoints", f"step_{first:06d}"))
    legs = [("", [{**r, "history": r["history"][:first]} for r in ref_ranks])]
    for world, last in LEGS[1:]:
        legs.append(train(out, world, f"ds_configs/{request.param}.json", **{"train.stop_at_step": str(last)}))
    return out, legs


def checkpoint_tensors(out, step):
    from trainer.state.reader import read_named_tensors

    path = os.path.join(out, "checkpoints", f"step_{step:06d}")
    return {kind: read_named_tensors(path, kind) for kind in KINDS}


@pytest.mark.slow
def test_resharded_run_continues_the_trajectory(reference, elastic):
    (ref_out, _), (out, legs) = reference, elastic
    assert "resharded from W=2 to W=4" in legs[1][0] and "resharded from W=4 to W=1" in legs[2][0], legs[1][0]
    assert [len(ranks) for _, ranks in legs] == [2, 4, 1]
    for _, ranks in legs[:2]:  # a Muon matrix straddles a partition boundary at W=2 and at W=4
        assert any(r["split_muon_matrices"] for r in ranks), [r["split_muon_matrices"] for r in ranks]
    want, got = checkpoint_tensors(ref_out, LEGS[-1][1]), checkpoint_tensors(out, LEGS[-1][1])
    for kind in KINDS:
        assert set(got[kind]) == set(want[kind]) and want[kind], kind
        for name, w in want[kind].items():
            err = (got[kind][name] - w).abs().max() / w.abs().max().clamp_min(1e-12)
            assert err <= 1e-5, (kind, name, float(err))


def independent_batch_hashes(steps: int) -> list[str]:
    """Each step's global batch as one process reads it (the loader at W=1 in this process, no
    launcher, no trainer), hashed here the way the trainer fingerprints a global batch: the sum over
    its rows of a 40-bit blake2b of (global row number, tokens), as 16 hex digits."""
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), as_args(COMMON))
    loader = TrainLoader(cfg.data, build_tokenizer(cfg.data), tokens_per_step=cfg.train.tokens_per_step,
                         grad_accum=cfg.train.grad_accum, max_seq_len=512)
    out = []
    for _ in range(steps):
        rows = torch.cat([b["input_ids"] for b in loader.next_step()])
        total = sum(int.from_bytes(hashlib.blake2b(n.to_bytes(8, "little") + row.numpy().tobytes(),
                                                   digest_size=5).digest(), "little")
                    for n, row in zip(loader.last_rows, rows))
        out.append(f"{total:016x}")
    return out


@pytest.mark.slow
def test_resharded_run_sees_the_same_global_batches(reference, elastic):
    (_, ref_ranks), (_, legs) = reference, elastic
    steps = LEGS[-1][1]
    want = independent_batch_hashes(steps)
    assert [h["batch_sha"] for h in ref_ranks[0]["history"]] == want  # the uninterrupted W=2 run
    first = LEGS[0][1]
    got = [h["batch_sha"] for _, ranks in legs[1:] for h in ranks[0]["history"]]  # the W=4 and W=1 legs
    assert got == want[first:]
    for i in range(1, len(LEGS)):  # every rank of a leg ran every step of it, on the same global batches
        prev, last = LEGS[i - 1][1], LEGS[i][1]
        for r in legs[i][1]:
            assert [h["step"] for h in r["history"]] == list(range(prev + 1, last + 1)), r["history"][:1]
            assert [h["batch_sha"] for h in r["history"]] == want[prev:last]
    assert [h["seq_len"] for _, ranks in legs[1:] for h in ranks[0]["history"]] == [64] * 2 + [128] * 6
