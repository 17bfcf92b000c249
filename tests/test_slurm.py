"""The SLURM path for real: `sbatch scripts/slurm/train.sbatch` on a one-node SLURM cluster on this
machine (scripts/slurm/setup_local_cluster.sh), one `scaleout train` launcher via srun, 2 CPU
processes under DeepSpeed ZeRO-2 (gloo), preempted twice (SIGUSR1 to the batch shell, then to every
process), requeued by the script each time, and ending bit for bit where an uninterrupted run ends.

Under CI (CI=true) the cluster must be there (.ci/run starts it; this test starts it too when it can)
and the test fails rather than skips. Elsewhere it skips, saying how to make the cluster."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import RUN_ENV, TINY_RUN, hashes, rank_summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "tests", "workers", "sitecustomize")
SETUP = os.path.join(ROOT, "scripts", "slurm", "setup_local_cluster.sh")
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = pytest.mark.slow  # SLURM jobs
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


def _job(job_id: str) -> dict:
    """`scontrol show job` as a dict (a finished job stays visible for MinJobAge, 300 s by default)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _read(path) -> str:
    return path.read_text() if path.exists() else ""


def _wait(job_id: str, log, what: str, done, timeout: float = 300, end: str = "COMPLETED") -> None:
    """Poll until ``done()``; fail at once if the job ends in another state than ``end``."""
    deadline = time.time() + timeout
    while not done():
        state = _job(job_id).get("JobState", "?")
        assert state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", end), \
            f"job {job_id} is {state} while waiting for {what}\n{_read(log)[-6000:]}"
        assert time.time() < deadline, f"job {job_id} ({state}): no {what} within {timeout:.0f} s\n{_read(log)[-6000:]}"
        time.sleep(0.3)


def test_preempted_job_requeues_and_resumes_bit_exact(slurm_cluster, zero2_reference, tmp_path):
    """Submit TINY_RUN (10 steps, a checkpoint every 2) with `--requeue --signal=B:USR1@300`. Rank 0 pauses
    after the checkpoints of steps 2 and 4 (tests/workers/faults.py) until the signal arrives, so the
    run stops at exactly steps 3 and 5: `scancel --signal=USR1 --batch` (the batch shell forwards it to
    the srun step), then `--full` (every process gets it). Each time the run saves, exits 75, and the
    script runs `scontrol requeue`; the job starts again (Restarts=2 at the end), resumes from the
    newest checkpoint, and ends with the same weights, master slices, optimizer state and EMA as the
    uninterrupted `scaleout train --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml` run."""
    out, log, mark = tmp_path / "run", tmp_path / "job.out", tmp_path / "paused"
    env = dict(RUN_ENV, ACCELERATE_CONFIG="accelerate_configs/cpu_multinode_zero2.yaml", PROCS_PER_NODE="2",
               PYTHON=sys.executable, PYTHONPATH=os.pathsep.join([SITE, ROOT]),
               FAULT_PAUSE="after_save:2,after_save:4", FAULT_UNTIL_SIGNAL="1", FAULT_MARK=str(mark))
    cmd = ["sbatch", "--parsable", "--nodes", "1", "--time", "30", "--job-name", f"scaleout-test-{os.getpid()}",
           "--output", str(log), "scripts/slurm/train.sbatch", *TINY_RUN, "--train.out_dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.strip().split(";")[0]
    try:
        for step, how in ((2, "--batch"), (4, "--full")):
            _wait(job, log, f"the pause after the checkpoint of step {step}",
                  lambda s=step: _read(mark) == f"after_save:{s}\n")
            subprocess.run(["scancel", "--signal=USR1", how, job], check=True, timeout=30)
        _wait(job, log, "the end of the job", lambda: _job(job).get("JobState") == "COMPLETED")
    finally:
        if _job(job).get("JobState") not in ("COMPLETED", None):
            subprocess.run(["scancel", job], capture_output=True)
    text = _read(log)
    state = _job(job)
    assert (state["Restarts"], state["ExitCode"]) == ("2", "0:0"), (state, text[-6000:])
    assert [int(n) for n in re.findall(r"train.sbatch: job \d+ start (\d+)", text)] == [1, 2, 3], text
    assert text.count("exited 75; scontrol requeue") == 2, text
    resumed = re.findall(r"resumed from \S+/(step_\d+) at step (\d+)", text)
    assert resumed == [("step_000003", "3"), ("step_000005", "5")], text
    assert "ChildFailedError" not in text and "Traceback" not in text, text
    assert "1 node(s) x 2 process(es)" in text and text.rstrip().endswith("train.sbatch: exit 0"), text[-3000:]

    ranks = rank_summaries(out)
    assert [(rk["process_index"], rk["num_processes"]) for rk in ranks] == [(0, 2), (1, 2)]
    assert hashes(ranks) == hashes(zero2_reference.summaries())
    assert (out / "checkpoints" / "step_000010" / "COMPLETE").exists()
    assert os.path.getsize(out / "export" / "model.safetensors") > 0


def test_other_exit_codes_pass_through_without_requeue(slurm_cluster, tmp_path):
    """Bad input (exit 2, found before any worker starts): the job fails with that code, no requeue."""
    log = tmp_path / "job.out"
    env = dict(RUN_ENV, ACCELERATE_CONFIG="accelerate_configs/cpu_multinode_zero2.yaml", PROCS_PER_NODE="2",
               PYTHON=sys.executable)
    cmd = ["sbatch", "--parsable", "--nodes", "1", "--time", "10", "--job-name", f"scaleout-test-{os.getpid()}",
           "--output", str(log), "scripts/slurm/train.sbatch", *TINY_RUN, "--train.out_dir", str(tmp_path / "run"),
           "--optim.lr", "-1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.strip().split(";")[0]
    try:
        _wait(job, log, "the end of the job", lambda: _job(job).get("JobState") == "FAILED", timeout=120,
              end="FAILED")
    finally:
        if _job(job).get("JobState") not in ("FAILED", "COMPLETED", None):
            subprocess.run(["scancel", job], capture_output=True)
    state, text = _job(job), _read(log)
    assert (state["Restarts"], state["ExitCode"]) == ("0", "2:0"), (state, text)
    assert "optim.lr" in text and text.rstrip().endswith("train.sbatch: exit 2"), text
    assert "requeue" not in text.replace("--requeue", ""), text
