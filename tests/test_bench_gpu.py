"""``scripts/bench/gpu.py --smoke`` on this CPU, so that the GPU benchmark cannot rot: every trainer path a
CPU can run works (compile on included), each one it cannot run says "n/a on cpu" with the reason, every
throughput figure is a finite number (speeds, MFU, ratios and compile times positive), and the table is
printed and written beside the JSON. About 3-4 minutes on 2 cores: marked slow."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))

import gpu  # noqa: E402  (scripts/bench/gpu.py)

CPU_CANNOT = {"EMA pinned side-stream device-to-host copy", "fused AdamW", "fp16 under DeepSpeed (its loss scaler)",
              "--accelerate-config accelerate_configs/1gpu.yaml"}
POSITIVE = ("tokens_per_s", "mfu", "trainer_vs_plain", "compile_s")  # key prefixes of figures that must be > 0


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench") / "gpu"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "scripts/bench/gpu.py", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout, json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_every_path_a_cpu_can_run_works_and_the_others_say_why_not(smoke_report):
    _, report, _ = smoke_report
    rows = {row["path"]: row for row in report["smoke"]}
    assert list(rows) == [path for path, *_ in gpu.SMOKE_ROWS]
    for path, row in rows.items():
        if path in CPU_CANNOT:
            assert row["status"] == "n/a on cpu" and row["reason"], row
        else:
            assert row["status"] == "works" and row["seconds"] > 0, row
    compiled = [row for row in rows.values() if row["run"] == "compiled"]
    assert compiled and all(row["status"] == "works" for row in compiled)  # torch.compile really ran on the CPU


@pytest.mark.slow
def test_every_throughput_figure_is_finite_and_the_speeds_positive(smoke_report):
    _, report, _ = smoke_report
    assert report["smoke_mode"] and report["device"] and not report["cuda"]
    assert all(report["versions"][k] for k in ("torch", "transformers", "deepspeed", "accelerate"))
    assert not [r for r in report["runs"] if r.get("skipped") or r.get("error")], report["runs"]
    figures = {f["key"]: f["value"] for f in report["figures"]}
    assert {"trainer_vs_plain_small", "trainer_mfu_large", "muon_overhead_small", "loader_share_prefetch_small",
            "loader_share_no_prefetch_small", "ema_overhead_small", "compile_s_phase0_small",
            "compile_s_phase1_small"} <= set(figures)
    for key, value in figures.items():
        assert value is not None and math.isfinite(value), (key, value)
        if key.startswith(POSITIVE) or "_tokens_per_s_" in key or "_mfu_" in key:
            assert value > 0, (key, value)
        if key.startswith("loader_share"):
            assert 0 <= value < 1, (key, value)
        if key.endswith("overhead_small"):
            assert value > -1, (key, value)  # a ratio of two positive step times, less 1
    phases = next(r for r in report["runs"] if r["size"] == "small" and r["variant"] == "full")["phases"]
    assert [p["seq_len"] for p in phases] == [64, 128]  # the 2-phase curriculum: one compile per phase


@pytest.mark.slow
def test_the_table_is_printed_and_written_beside_the_json(smoke_report):
    stdout, report, markdown = smoke_report
    assert report["table"] in stdout and report["table"] in markdown
    for row in report["smoke"]:
        assert f"| smoke: {row['path']} | {row['status']}" in report["table"]
    for figure in report["figures"]:
        assert f"| {figure['label']} |" in report["table"]
