"""The CPU EMA (trainer/state/ema.py): its decay rule, and equality with a reference EMA computed in one
process from the same weight trajectory: in one process, and on 2 launched ranks under ZeRO-1, ZeRO-2
(a Muon matrix straddles a partition boundary) and DDP (whole parameters on every rank); under ZeRO each
rank holds 1/W of it; an EMA evaluation leaves the raw weights bit-identical; a saved EMA is restored
exactly. The EMA at W=4 is checked by tests/test_elastic.py against the uninterrupted W=2 run."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.workers.ema_parity import EMA, STEPS  # noqa: E402
from tests.workers.muon_parity import global_batch, run_config, tiny_model  # noqa: E402
from trainer.config.base import ConfigError  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.state.ema import EmaConfig, ShardEMA, ema_decay, is_update_step  # noqa: E402

WORKER = os.path.join(ROOT, "tests", "workers", "ema_parity.py")
# One launch per line (its modes run in turn in it, so a mode costs seconds, a launch ~20 s). Add
# (4, ["zero2"]) to check W=4 against the float64 reference too (3.0e-8 when the EMA was written).
# DDP first: accelerate's state cannot go back from a DeepSpeed Accelerator to a plain one in a process.
LAUNCHES = [(2, ["ddp", "zero1", "zero2"])]


def reference_ema(trajectory: list[dict], cfg: EmaConfig) -> dict:
    """EMA of the weights after each step (trajectory[s] = weights after step s), in float64."""
    ema = None
    for step, weights in enumerate(trajectory):
        if ema is None:
            if step >= cfg.start_step:
                ema = {n: w.double() for n, w in weights.items()}
        elif is_update_step(step, cfg):
            d = ema_decay(step, cfg)
            ema = {n: d * ema[n] + (1 - d) * weights[n].double() for n in ema}
    return ema


def max_rel(got: dict, want: dict) -> float:
    return max(((got[n].double() - want[n]).norm() / want[n].norm()).item() for n in want)


def test_decay_rule():
    cfg = EmaConfig(decay=0.99, every=1, warmup=False)
    assert ema_decay(5, cfg) == 0.99
    warm = EmaConfig(decay=0.99, every=1, warmup=True)
    assert ema_decay(0, warm) == pytest.approx(0.1) and ema_decay(10_000, warm) == 0.99
    every = EmaConfig(decay=0.99, every=10, warmup=False)
    assert ema_decay(10, every) == pytest.approx(0.99 ** 10)  # same horizon, a tenth of the updates
    assert [s for s in range(8) if is_update_step(s, EmaConfig(every=3, start_step=1))] == [4, 7]


@pytest.mark.parametrize("key,value", [("decay", 1.0), ("decay", 0.0), ("every", 0), ("start_step", -1)])
def test_bad_config(key, value):
    with pytest.raises(ConfigError, match=f"ema.{key}"):
        EmaConfig(**{key: value}).validate()


def test_whole_params_single_process():
    """No DeepSpeed, one process: the EMA tracks whole parameters and matches the reference."""
    torch.manual_seed(0)
    model = tiny_model()
    named = dict(model.named_parameters())
    opt = build_optimizer(model, run_config())
    ema = ShardEMA.from_optimizer(opt, [list(g["params"]) for g in opt.param_groups], named, EMA)
    assert not ema.sharded
    trajectory = [{n: p.detach().clone() for n, p in named.items()}]
    ema.update(0)
    for step in range(STEPS):
        chunk = global_batch(step, 1, 1)[0]
        model(input_ids=chunk, labels=chunk).loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update(step + 1)
        trajectory.append({n: p.detach().clone() for n, p in named.items()})
    assert max_rel(ema.assemble(), reference_ema(trajectory, EMA)) <= 1e-6
    raw = {n: p.detach().clone() for n, p in named.items()}
    with ema.swapped_into(model):
        assert not torch.equal(named["model.layers.0.mlp.up_proj.weight"], raw["model.layers.0.mlp.up_proj.weight"])
    assert all(torch.equal(raw[n], p) for n, p in named.items())
    ema.close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    found = {}
    for world, modes in LAUNCHES:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(ROOT, "accelerate_configs", "cpu_2proc_zero2.yaml"), "--num_processes", str(world),
               WORKER, str(out), *modes]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        for mode in modes:
            found[(world, mode)] = torch.load(out / f"ema_{mode}_w{world}.pt")
    return found


CASES = [(w, m) for w, modes in LAUNCHES for m in modes]


@pytest.mark.slow
@pytest.mark.parametrize("world,mode", CASES)
def test_launched_ema_matches_reference(launched, world, mode):
    r = launched[(world, mode)]
    assert r["world"] == world and len(r["trajectory"]) == STEPS + 1
    rel = max_rel(r["ema"], reference_ema(r["trajectory"], EMA))
    print(f"W={world} {mode}: max relative EMA difference {rel:.2e}")
    assert rel <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("world,mode", CASES)
def test_launched_ema_is_sharded(launched, world, mode):
    r = launched[(world, mode)]
    total = 4 * r["model_numel"]
    if mode == "ddp":  # no ZeRO: every rank tracks whole parameters
        assert not r["sharded"] and all(b == total for b in r["ema_bytes"])
    else:
        assert r["sharded"]
        for b in r["ema_bytes"]:  # DeepSpeed pads each flat partition a little for alignment
            assert abs(b - total / world) <= 0.02 * total / world, (b, total / world)


@pytest.mark.slow
@pytest.mark.parametrize("world,mode", CASES)
def test_launched_ema_eval_and_restore(launched, world, mode):
    r = launched[(world, mode)]
    assert r["swapped_in"], "the EMA weights were not the ones in the model during evaluation"
    assert r["raw_restored"], "raw weights changed after an EMA evaluation"
    assert r["restored_exact"], "EMA restored from its shard state differs"
