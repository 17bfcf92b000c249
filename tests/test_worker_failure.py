"""Issue 17: a worker that dies is one line from the launcher (trainer/launch/: status.root_failure,
the quiet torchrun's failures record, the crashed worker's traceback in the launch log). The launched
case (SIGKILL to one worker, then resume) is in tests/test_reliability.py
(test_sigkill_everywhere_then_resume_is_bit_exact)."""

import signal

from trainer.launch import status, worker


def test_a_crash_under_the_launcher_goes_to_the_launch_log(tmp_path, capsys, monkeypatch):
    log = tmp_path / "run" / "logs" / "launcher-1.log"
    monkeypatch.setenv(status.STATUS_ENV, str(tmp_path))
    monkeypatch.setenv(status.LOG_ENV, str(log))

    def crash():
        raise RuntimeError("boom\nsecond line")

    assert worker.run_worker(crash) == 1  # torchrun must see the failure and stop the peers
    assert capsys.readouterr().err == ""
    text = log.read_text()
    assert "worker rank 0" in text and "Traceback" in text and "RuntimeError: boom" in text
    record = status.read_statuses(str(tmp_path))[0]
    assert record["code"] == 1 and record["crash"] == "RuntimeError: boom" and record["time"] > 0


def test_root_failure_is_the_killed_worker_not_its_peers():
    killed = {1: {"exitcode": -signal.SIGKILL, "pid": 11, "time": 100, "order": 1},
              0: {"exitcode": 1, "pid": 10, "time": 100, "order": 0}}
    peer_crashed = {0: {"code": 1, "crash": "RuntimeError: Connection closed by peer", "time": 100.5}}
    assert status.root_failure(killed, peer_crashed) == (1, "killed by SIGKILL", 137)
    # a Python exception on rank 1 first; rank 0 lost its peer after it, rank 2 was stopped by torchrun
    crashes = {0: {"exitcode": 1, "pid": 10, "time": 100, "order": 0},
               1: {"exitcode": 1, "pid": 11, "time": 100, "order": 1},
               2: {"exitcode": -signal.SIGTERM, "pid": 12, "time": 100, "order": 2}}
    records = {0: {"code": 1, "crash": "RuntimeError: Connection closed by peer", "time": 100.7},
               1: {"code": 1, "crash": "KeyError: 'x'", "time": 100.2}}
    assert status.root_failure(crashes, records) == (1, "crashed with KeyError: 'x'", 1)
    # seconds apart: the earlier one, whatever it was (torchrun's SIGKILL of a stuck peer comes 30 s later)
    late = {0: {"exitcode": -signal.SIGKILL, "pid": 10, "time": 130, "order": 1},
            1: {"exitcode": 1, "pid": 11, "time": 100, "order": 0}}
    assert status.root_failure(late, {1: records[1]}) == (1, "crashed with KeyError: 'x'", 1)
    exited = {3: {"exitcode": 7, "pid": 1, "time": 1, "order": 0}}
    assert status.root_failure(exited, {}) == (3, "exited with code 7", 7)


def test_resume_command_is_the_same_command_resuming_from_the_run():
    argv = ["train", "configs/tiny.yaml", "--log.trackers", "[]", "--checkpoint.resume", "null", "--train.steps=5",
            "--checkpoint.resume=/x/step_000002"]
    assert status.resume_command(argv) == ("scaleout train configs/tiny.yaml --log.trackers '[]' --train.steps=5 "
                                           "--checkpoint.resume auto")
