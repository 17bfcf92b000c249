"""Shared by the tests: the plain 2-process run that launched tests compare with (test_reliability.py,
test_slurm.py, test_multinode.py, test_elastic.py, ...), and the rule of the ``slow`` marker: a test
that starts a multi-process run (``accelerate launch``, ``--accelerate-config``, torchrun, a SLURM job)
is marked ``slow``; one that is not and tries fails, so ``pytest -m "not slow"`` starts none."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny 2-process ZeRO-2 run the launched tests share (tests/test_reliability.py kills and damages
# it, test_slurm.py preempts it, test_multinode.py runs it on two "machines", test_elastic.py reshards
# it): 10 steps of 2,048 tokens in 2 micro-batches, the curriculum's phase change (64 -> 128) after
# step 4, a checkpoint every 2 steps, EMA on; 3 layers, so that ZeRO's partition boundaries at W=2
# and at W=4 fall inside Muon matrices.
COMMON = {"train.steps": "10", "checkpoint.every": "2", "checkpoint.keep": "2", "ema.enabled": "true",
          "ema.decay": "0.9", "data.curriculum": "64:8K,128:inf", "train.tokens_per_step": "2048",
          "train.grad_accum": "2", "train.eval_every": "0", "train.warmup_steps": "3", "log.trackers": "[]",
          "log.progress": "false", "model.n_layers": "3"}


def as_args(keys: dict) -> list[str]:
    return [arg for k, v in keys.items() for arg in (f"--{k}", v)]


TINY_RUN = ["configs/tiny.yaml", *as_args(COMMON)]
HASHES = ("weights_sha256", "master_sha256", "optimizer_sha256", "ema_sha256")
RUN_ENV = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
# In the workers' environment of runs that must not leak them (the shared run; test_export's).
SECRETS = {"WANDB_API_KEY": "wk0000test0secret0never0logged00000000", "HF_TOKEN": "hf_TestSecretNeverLogged123"}


# What a process that aborts at exit leaves in a run's output: the C++ runtime's line, torchrun's
# report of a worker killed by a signal (its own SIGTERM/SIGKILL of peers is not reported), and the
# quiet torchrun's traceback for an unexplained failure (trainer/launch/torchrun.py).
ABORT_MARKS = ("terminate called", "SIGABRT", "exitcode: -6", "ChildFailedError", "Signals.SIG", "Traceback")


def assert_no_abort(output: str) -> None:
    """No process of the run aborted at exit (trainer/launch/process_group.py) and none left a traceback."""
    found = [m for m in ABORT_MARKS if m in output]
    assert not found, (found, output[-4000:])


def rank_summaries(out_dir, world: int = 2) -> list[dict]:
    return [json.load(open(os.path.join(out_dir, "ranks", f"rank{r}.json"))) for r in range(world)]


def hashes(summaries: list[dict]) -> list[dict]:
    """Per rank: the weights, its fp32 master slice, its optimizer state and EMA slices."""
    return [{k: s[k] for k in HASHES} for s in summaries]


class _Reference:
    """TINY_RUN uninterrupted (every checkpoint kept), started in the background by the first test
    that asks, once for the whole session, whichever pytest-xdist worker asks first (the others wait
    for its exit-code file): `scaleout train --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml`,
    with wandb (offline) and SECRETS in its environment (test_train_launched.py reads its files;
    trackers change no number)."""

    def __init__(self, root):
        self.out_dir, self._summaries = str(root / "run"), None
        self.log_path, self.rc_path = root / "reference.log", root / "reference.rc"
        self.proc = None
        try:
            os.close(os.open(root / "started", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return  # another worker started it
        keep_all = as_args(dict(COMMON, **{"checkpoint.keep": "5", "log.trackers": "[wandb]"}))  # steps 2, 4, ..., 10
        cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", *keep_all, "--accelerate-config",
               "accelerate_configs/cpu_2proc_zero2.yaml", "--train.out_dir", self.out_dir]
        self.proc = subprocess.Popen(["/bin/sh", "-c", f'"$@" > "{self.log_path}" 2>&1; echo $? > "{self.rc_path}"',
                                      "sh", *cmd], cwd=ROOT, env=dict(RUN_ENV, **SECRETS))

    def summaries(self) -> list[dict]:
        """Waits for the run; its rank summaries."""
        if self._summaries is None:
            deadline = time.monotonic() + 900
            while not (self.rc_path.exists() and self.rc_path.read_text().strip()):
                assert time.monotonic() < deadline, "the reference run did not end within 900 s"
                time.sleep(0.2)
            rc = int(self.rc_path.read_text())
            assert rc == 0, f"reference run exit {rc}:\n{self.console()[-6000:]}"
            self._summaries = rank_summaries(self.out_dir)
            assert [s["num_processes"] for s in self._summaries] == [2, 2]
        return self._summaries

    def console(self) -> str:
        """The run's console output so far (all of it after ``summaries()``)."""
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def zero2_reference(tmp_path_factory, worker_id):
    """The plain single-node 2-process ZeRO-2 run of TINY_RUN; ``.summaries()`` waits for it."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "zero2_reference"  # shared by the xdist workers
    root.mkdir(exist_ok=True)
    ref = _Reference(root)
    yield ref
    if ref.proc is not None:  # another worker may still read it: let it end
        ref.proc.wait(timeout=900)


@pytest.fixture
def no_launch(monkeypatch):
    """Any process start fails the row (wherever the launch lives)."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "execvp", refuse)
    return started


# -- the slow marker, enforced ---------------------------------------------------------------------
LAUNCHES = ("--accelerate-config", "accelerate.commands.launch", "trainer.launch.torchrun", "torch.distributed.run",
            "torchrun", "sbatch", "srun")
_current = {"may_launch": True}  # between tests (collection, session teardown) nothing is refused


def launches(args) -> bool:
    """Whether a command line starts a multi-process run."""
    argv = [str(a) for a in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]
    words = {os.path.basename(w) for w in argv} | set(argv)
    return any(m in words for m in LAUNCHES) or ("accelerate" in words and "launch" in words) \
        or any(w.endswith("tests/workers/exit_paths.py") for w in argv)


class _GuardedPopen(subprocess.Popen):
    def __init__(self, args, *a, **kw):
        if not _current["may_launch"] and launches(args):
            raise AssertionError(f"a test without @pytest.mark.slow started a multi-process run: {args}")
        super().__init__(args, *a, **kw)


subprocess.Popen = _GuardedPopen


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current["may_launch"] = any(item.get_closest_marker(m) for m in ("slow", "exits_before_launch"))  # before fixtures


def pytest_runtest_teardown(item):
    _current["may_launch"] = True


# -- order: the longest files first --------------------------------------------------------------
# scripts/run_tests.sh runs the files on pytest-xdist workers (--dist loadfile, in this order,
# --no-loadscope-reorder): the long launched files start at once, side by side, and the short
# in-process files fill the gaps at the end. Measured order; a file not named here runs after these.
LONGEST_FIRST = ("test_elastic", "test_reliability", "test_ddp_resume", "test_slurm", "test_exits", "test_gpu_kit",
                 "test_signals", "test_old_checkpoint", "test_muon_zero", "test_architectures", "test_multinode",
                 "test_pinned", "test_storage", "test_train_single", "test_hub_ids",
                 "test_export", "test_hub", "test_mup_zero", "test_ema", "test_train_launched", "test_cli")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))
