"""muP param groups keep their own lr inside DeepSpeed ZeRO-2 (2 launched CPU ranks), with the
loop's LambdaLR scaling each group's base lr (DeepSpeed's WarmupLR would overwrite them all)."""

import json
import os
import subprocess
import sys

import pytest

from trainer.mup import lr_multiplier

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WMULT = 128 / 32  # the worker's width / base_width


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    """One launch, both optimizers in turn (a fresh Accelerator each): optimizer -> record."""
    out = tmp_path_factory.mktemp("mup_zero") / "groups.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
           "accelerate_configs/cpu_2proc_zero2.yaml", "tests/workers/mup_zero_groups.py", str(out), "muon", "adamw"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("optim", ["muon", "adamw"])
def test_group_lrs_survive_zero2_prepare_and_schedule(optim, launched):
    rec = launched[optim]
    assert rec["world"] == 2 and rec["zero_type"] == "DeepSpeedZeroOptimizer"
    assert all(len(shapes) == 1 and len(shapes[0]) == 1 for shapes in rec["flat"])  # one flat partition
    base = {"muon": 0.02, "adamw": 0.004}
    expected = {}
    for cls in ("hidden", "embedding", "readout", "vector"):
        kind = "muon" if optim == "muon" and cls == "hidden" else "adamw"
        expected[f"{kind}_{cls}"] = base[kind] * lr_multiplier(cls, kind, WMULT, "match_rms_adamw")
    assert rec["built"] == pytest.approx(expected)
    # warmup 4 steps: factor 1/4 at step 0, 3/4 after two steps; each group keeps its own base lr
    assert rec["prepared"] == pytest.approx({k: v / 4 for k, v in expected.items()})
    assert rec["after_2_steps"] == pytest.approx({k: 3 * v / 4 for k, v in expected.items()})
