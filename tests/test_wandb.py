"""wandb that follows the run: one run id across a stop and a resume, every metric read back from
wandb's own run files, the ``wandb sync`` line once, and a key without a reachable server falls back
offline quickly without the key reaching any file or output.

In-process runs of ``trainer.run.loop.train`` (tiny model, one process, no DeepSpeed). The offline
``.wandb`` files are wandb's transaction log (leveldb log format, records are
``wandb.proto.wandb_internal_pb2.Record``); wandb 0.31 ships no Python reader, so ``read_records``
below walks the blocks (checksums verified) and wandb's protobuf parses each record.
"""

import glob
import http.server
import json
import os
import re
import socket
import struct
import threading
import time
import zlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_KEY = "wk0000fake0key0never0logged0000000000000"
STEPS = 6


def read_records(path: str):
    """Every record of a ``.wandb`` file, in order."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = open(path, "rb").read()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, path
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def history_and_runs(out_dir: str):
    """(history rows as {key: value}, run records, config updates) over all parts, oldest first."""
    rows, runs, config = [], [], {}
    for path in sorted(glob.glob(os.path.join(out_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        for r in read_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                rows.append(row)
            elif kind == "run":
                runs.append(r.run)
            if kind in ("run", "config"):
                items = (r.run if kind == "run" else r).config.update
                config.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in items})
    return rows, runs, config


def train(out_dir, *overrides, steps=STEPS):
    from trainer.config import load_config
    from trainer.run.loop import train as run_train

    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), [
        "--train.out_dir", str(out_dir), "--train.steps", str(steps), "--train.tokens_per_step", "1024",
        "--data.curriculum", "64:3K,128:inf", "--train.eval_every", "2", "--train.eval_batches", "1",
        "--train.warmup_steps", "1", "--checkpoint.every", "0", "--log.trackers", "[wandb]",
        "--log.progress", "false", "--dist.deepspeed_config", "null", "--data.tokenizer", "bytes", *overrides])
    return run_train(cfg)


@pytest.fixture
def env(monkeypatch):
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_INIT_TIMEOUT", "RANK", "WORLD_SIZE",
              "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", os.devnull)  # no credentials from the machine's ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/nonexistent-wandb-config")
    return monkeypatch


def test_stop_and_resume_is_one_run_with_every_metric(tmp_path, env, capfd):
    first = train(tmp_path, "--train.stop_at_step", "3")
    assert first["step"] == 3
    out1 = capfd.readouterr()
    second = train(tmp_path)
    assert second["step"] == STEPS
    out2 = capfd.readouterr()

    rows, runs, config = history_and_runs(tmp_path)
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1 and all(r.resume for r in runs)
    run_id = runs[0].run_id
    saved = json.load(open(glob.glob(str(tmp_path / "checkpoints" / "step_*" / "trainer.json"))[-1]))
    assert saved["wandb_run_id"] == run_id

    assert [r["_step"] for r in rows] == list(range(1, STEPS + 1))  # each step once across both parts
    groups = ["muon_hidden", "adamw_embedding", "adamw_vector"]
    every = ["train/loss", "train/grad_norm", "train/tokens_seen", "train/tokens_per_s", "train/mfu",
             "train/peak_memory_gb", "train/data_wait_s", "train/seq_len", "train/phase", "train/skipped_steps",
             *(f"train/lr/{g}" for g in groups)]
    for row in rows:
        missing = [k for k in every if k not in row]
        assert not missing, (row["_step"], missing)
    for row in rows:  # validation every 2 steps and at the stop (step 3): raw and EMA weights
        has_val = row["_step"] in (2, 3, 4, 6)
        assert ("val/loss" in row) == has_val and ("val/loss_ema" in row) == has_val, row["_step"]
    assert [r["train/seq_len"] for r in rows] == [64, 64, 64, 128, 128, 128]
    assert [r["train/phase"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [r["train/tokens_seen"] for r in rows] == [1024 * s for s in range(1, STEPS + 1)]
    assert all(r["train/skipped_steps"] == 0 for r in rows)
    assert rows[-1]["train/lr/muon_hidden"] != rows[-1]["train/lr/adamw_embedding"]  # per-group, not one lr

    assert config["optim.lr"] == 0.02 and config["train.out_dir"] == str(tmp_path)
    assert config["log.trackers"] == ["wandb"] and config["data.curriculum"] == "64:3K,128:inf"

    for out in (out1, out2):  # the sync command once per process, naming every part of this run
        lines = [x for x in (out.out + out.err).splitlines() if "wandb sync" in x]
        assert len(lines) == 1, lines
        assert lines[0].endswith(f"wandb sync {tmp_path}/wandb/offline-run-*-{run_id}")
    assert "(2 parts)" in out2.out
    assert len(glob.glob(f"{tmp_path}/wandb/offline-run-*-{run_id}")) == 2


def test_a_key_without_a_server_falls_back_offline_quickly(tmp_path, env, capfd):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.setenv("WANDB_API_KEY", FAKE_KEY)
    env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    from trainer.run import tracking

    decide, took = tracking.resolve_mode, []

    def timed(warn):  # the real decision, timed inside the run
        t0 = time.perf_counter()
        try:
            return decide(warn)
        finally:
            took.append(time.perf_counter() - t0)

    env.setattr(tracking, "resolve_mode", timed)
    result = train(tmp_path, steps=2)
    out = capfd.readouterr()
    text = out.out + out.err
    assert result["step"] == 2 and result["exit_code"] == 0
    warnings = [x for x in text.splitlines() if "wandb: warning" in x]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0] and "offline" in warnings[0], warnings
    assert len(took) == 1 and took[0] < 2.0, took  # wandb's own online init retries for ~15 s here
    rows, runs, _ = history_and_runs(tmp_path)
    assert len(runs) == 1 and [r["_step"] for r in rows] == [1, 2]
    assert len([x for x in text.splitlines() if "wandb sync" in x]) == 1

    assert FAKE_KEY not in text
    scanned = 0
    for root, _, files in os.walk(tmp_path):
        for name in files:
            scanned += 1
            assert FAKE_KEY.encode() not in open(os.path.join(root, name), "rb").read(), os.path.join(root, name)
    assert scanned > 10


def test_flat_config_leaves_out_secrets(env):
    from trainer.run.tracking import flat_config

    env.setenv("HF_TOKEN", "hf_secret_value")
    flat = flat_config({"hub": {"token": "x", "repo_id": "hf_secret_value", "push_every": 2},
                        "train": {"tokens_per_step": 1024}, "wandb": {"api_key": "k"}})
    assert flat == {"hub.push_every": 2, "train.tokens_per_step": 1024}


class _Answers501(http.server.BaseHTTPRequestHandler):
    """An HTTP server that is not wandb: every request gets 501."""

    def _answer(self):
        self.send_response(501)
        self.end_headers()

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def not_wandb_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers501)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_says_why_in_one_line(not_wandb_server):
    from trainer.run.tracking import unreachable

    assert unreachable(not_wandb_server) is None  # any HTTP answer counts
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        problem = unreachable(url)
        assert re.fullmatch(r"cannot reach the wandb API host 127\.0\.0\.1:\d+ \(.+\)", problem), problem
        s.listen(1)  # accepts connections, never answers
        t0 = time.perf_counter()
        problem = unreachable(url, timeout=1.0)
        assert problem and "127.0.0.1" in problem and time.perf_counter() - t0 < 2.0, problem


def test_a_server_that_is_not_wandb_falls_back_offline(tmp_path, env, capfd, not_wandb_server):
    """The host answers (so the quick check passes) but wandb.init fails: one warning, offline run."""
    from types import SimpleNamespace

    from trainer.config import load_config
    from trainer.run import tracking
    from trainer.run.dist import build_accelerator

    env.setenv("WANDB_API_KEY", FAKE_KEY)
    env.setenv("WANDB_BASE_URL", not_wandb_server)
    env.setenv("WANDB_INIT_TIMEOUT", "5")  # wandb retries the 501s until then (default here: 20 s)
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), ["--train.out_dir", str(tmp_path)])
    acc = build_accelerator(None, grad_accum=1, log_with=["wandb"], project_dir=str(tmp_path))
    state = {"step": 0}
    t0 = time.perf_counter()
    tracker = tracking.start(SimpleNamespace(cfg=cfg, accelerator=acc), state)
    took = time.perf_counter() - t0
    tracker.log({"train/loss": 1.0}, 1)
    tracker.finish()
    out = capfd.readouterr()
    text = out.out + out.err
    assert tracker.wandb_mode == "offline" and state["wandb_run_id"] == tracker.run_id
    warnings = [x for x in text.splitlines() if "wandb: warning" in x]
    assert len(warnings) == 1 and "wandb.init failed online" in warnings[0], warnings
    assert len([x for x in text.splitlines() if "wandb sync" in x]) == 1
    assert took < 25, took  # the online attempt, then the offline run's start
    rows, runs, _ = history_and_runs(tmp_path)
    assert [r.run_id for r in runs] == [tracker.run_id] and [r["train/loss"] for r in rows] == [1.0]
    assert FAKE_KEY not in text
    for root, _, files in os.walk(tmp_path):
        for name in files:
            assert FAKE_KEY.encode() not in open(os.path.join(root, name), "rb").read(), os.path.join(root, name)


def test_mode_without_credentials_and_from_wandb_mode(env):
    from trainer.run.tracking import resolve_mode

    said = []
    assert resolve_mode(said.append) == "offline" and said == ["wandb: no credentials found, logging offline"]
    for value, mode in (("disabled", "disabled"), ("dryrun", "offline"), ("offline", "offline")):
        env.setenv("WANDB_MODE", value)
        assert resolve_mode(said.append) == mode
    assert len(said) == 1
