"""The SLURM path for real: `sbatch scripts/slurm/train.sbatch` on a one-node SLURM cluster on this
machine (scripts/slurm/setup_local_cluster.sh), one `accelerate launch` via srun, 2 CPU processes
under DeepSpeed ZeRO-2 (gloo).

Under CI (CI=true) the cluster must be there (.ci/run starts it; this test starts it too when it can)
and the test fails rather than skips. Elsewhere it skips, saying how to make the cluster."""

import glob
import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "slurm", "setup_local_cluster.sh")
IN_CI = os.environ.get("CI", "").lower() == "true"
HOW = "make one with `sudo bash scripts/slurm/setup_local_cluster.sh` (Debian/Ubuntu: installs slurm-wlm + munge)"


def _srun_works() -> bool:
    if not shutil.which("srun"):
        return False
    try:
        r = subprocess.run(["srun", "-n2", "--immediate=30", "hostname"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0 and len(r.stdout.split()) == 2


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true but no SLURM cluster: {reason}")
    pytest.skip(f"no SLURM cluster: {reason}; {HOW}")


@pytest.fixture(scope="module")
def slurm_cluster():
    """A cluster where `srun -n2 hostname` runs: the one already up, or the setup script's."""
    if _srun_works():
        return
    can_setup = os.geteuid() == 0 and (shutil.which("sbatch") or (IN_CI and shutil.which("apt-get")))
    if not can_setup:
        _unavailable("`srun -n2 hostname` does not run here")
    # Installed but not running (e.g. after a reboot) or, in CI, not installed yet: the script is idempotent.
    r = subprocess.run(["bash", SETUP], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        _unavailable(f"{SETUP} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    if not _srun_works():
        _unavailable("the setup script finished but `srun -n2 hostname` does not run")


def test_sbatch_trains_two_processes(slurm_cluster, tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "job.out"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_CONFIG="accelerate_configs/cpu_multinode_zero2.yaml", PROCS_PER_NODE="2")
    cmd = ["sbatch", "--wait", "--parsable", "--nodes", "1", "--time", "10", "--job-name", "scaleout-test",
           "--output", str(log), "scripts/slurm/train.sbatch", "configs/tiny.yaml",
           "--train.steps", "6", "--train.out_dir", str(out), "--checkpoint.every", "3", "--log.progress", "false",
           "--data.curriculum", "64:inf", "--train.tokens_per_step", "2048"]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=660)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name", "scaleout-test"], capture_output=True)
        raise
    job_log = log.read_text() if log.exists() else "(no job output file)"
    assert r.returncode == 0, f"sbatch rc={r.returncode}\n{r.stdout}\n{r.stderr}\n--- job output:\n{job_log[-6000:]}"
    job_id = r.stdout.strip().split(";")[0]
    state = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    if state:  # finished jobs stay visible for MinJobAge (300 s by default)
        assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state
    assert "1 node(s) x 2 process(es)" in job_log, job_log[:2000]

    ranks = [json.load(open(out / "ranks" / f"rank{i}.json")) for i in (0, 1)]
    assert [rk["process_index"] for rk in ranks] == [0, 1]
    assert all(rk["num_processes"] == 2 for rk in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    ckpts = sorted(glob.glob(str(out / "checkpoints" / "step_*")))
    assert [os.path.basename(c) for c in ckpts] == ["step_000003", "step_000006"]
    for c in ckpts:
        assert os.path.exists(os.path.join(c, "COMPLETE"))
        assert all(os.path.exists(os.path.join(c, "state", f"rank{r}.pt")) for r in range(2))
    assert os.path.getsize(out / "export" / "model.safetensors") > 0
