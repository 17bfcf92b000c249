"""No process aborts at exit, whichever way it leaves (trainer/launch/process_group.py).

torch 2.13's gloo can SIGABRT a process that exits with its process group alive ("terminate called
without an active exception"): 2 of 8 bare 2-process runs of one all_reduce (docs/design.md). Two tiers:

- a small torch + gloo worker (tests/workers/exit_paths.py, no model) through the trainer's own
  worker wrapper, every exit path 10 times on 2 processes: each process exits with its path's code,
  none by a signal, and no "terminate called" line; in the two signal paths a signal reaches one
  rank (or each rank a different one) and both ranks exit with the code they agreed on;
- the real trainer through ``scaleout train`` (2 processes, ZeRO-2), each exit code once: 2 (bad
  input found inside the workers) here; 0 (finished), 3 (diverged) and 75 (preempted by SIGUSR1) in
  the tests that already run them (``conftest.assert_no_abort`` there too). The quiet torchrun
  reports a worker killed by any signal but the SIGTERM/SIGKILL it sends to peers itself, so an
  abort shows up as a failure report and a traceback there.
"""

import os
import socket
import subprocess
import sys

import pytest
from conftest import assert_no_abort  # tests/ is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "exit_paths.py")
SITE = os.path.join(ROOT, "tests", "workers", "sitecustomize")
EXPECTED = {"ok": 0, "usage": 2, "diverged": 3, "requeue": 75, "signal": 0, "crash": 1}
REPEATS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(path: str) -> list[subprocess.Popen]:
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, WORKER, path], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]


@pytest.fixture(scope="module")
def exits() -> dict[str, list[tuple[int, str]]]:
    """Every path REPEATS times, 4 pairs at a time (fresh interpreters: the abort happens in teardown):
    per path, every process's (exit code, output)."""
    todo = [path for path in EXPECTED for _ in range(REPEATS)]
    running, done = [], {path: [] for path in EXPECTED}
    while todo or running:
        while todo and len(running) < 4:
            path = todo.pop()
            running.append((path, start_pair(path)))
        path, pair = running.pop(0)
        done[path] += [(p.wait(timeout=120), p.stdout.read()) for p in pair]
    return done


@pytest.mark.slow
@pytest.mark.parametrize("path", list(EXPECTED))
def test_gloo_worker_exit_path_never_aborts(path, exits):
    results = exits[path]
    assert len(results) == 2 * REPEATS
    for code, out in results:
        assert code == EXPECTED[path], (code, out[-3000:])
        assert "terminate called" not in out, out[-3000:]
    if path == "usage":  # one line, no traceback
        assert all(out.strip().splitlines()[-1].startswith("scaleout train: error: data.source") for _, out in results)


# -- the real trainer ------------------------------------------------------------------------------
TRAIN = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--accelerate-config",
         "accelerate_configs/cpu_2proc_zero2.yaml", "--data.curriculum", "64:inf", "--train.tokens_per_step", "1024",
         "--train.eval_every", "0", "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false",
         "--model.n_layers", "2", "--train.warmup_steps", "1"]


def few_docs(tmp_path) -> str:
    """A jsonl source of 3 documents: with data.partitions 4 one partition has none, which only the
    workers find out (they read the stream); exit 2 with one line."""
    path = tmp_path / "three.jsonl"
    path.write_text("".join(f'{{"text": "def f{i}():\\n    return {i}\\n" }}\n' for i in range(3)))
    return str(path)


CASES = {
    "bad-input-in-worker": (2, ["--train.steps", "3", "--data.partitions", "4", "--data.val_every", "0",
                                "--data.tokenizer", "bytes", "--data.source", "{few_docs}"], {}),
}
# Exit 0 (finished), 3 (diverged) and 75 (preempted by SIGUSR1) run the same check (conftest.assert_no_abort)
# in tests/test_train_launched.py::test_the_run_exits_0_without_an_abort (the shared run),
# tests/test_reliability.py::test_nonfinite_steps_skipped_then_divergence_stops_the_run and
# tests/test_signals.py::test_sigusr1_to_launcher_saves_and_exits_75; a stop by SIGTERM (exit 0) in
# tests/test_signals.py::test_sigterm_to_launcher_saves_and_exits_0_and_the_lock_refuses_a_second_run.


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_trainer_exit_code_without_abort(case, tmp_path):
    code, args, fault_env = CASES[case]
    args = [a.replace("{few_docs}", few_docs(tmp_path)) if "{few_docs}" in a else a for a in args]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([SITE, ROOT]), **fault_env)
    log_path = tmp_path / "console.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(TRAIN + args + ["--train.out_dir", str(tmp_path / "run")], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        rc = proc.wait(timeout=300)
    out = log_path.read_text()
    assert rc == code, out[-4000:]
    assert_no_abort(out)
    if code == 2:
        errors = [ln for ln in out.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "data.partitions" in errors[0], out[-4000:]
