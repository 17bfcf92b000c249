"""Pushing to the Hub against a real HTTP stand-in on 127.0.0.1 (tests/hub_server.py): ``scaleout push`` of
an export folder, the background push during training (in order, per-step branches, final on main, no
stalled step), a failing Hub that training survives, bad input, and the token kept out of every file and log.

Everything runs in this process (``trainer.cli.main``), so the server's clock is the trainer's."""

import json
import os

import pytest

from tests.hub_server import HubServer
from trainer.cli import main as cli
from trainer.hf import hub as hub_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "hf_TESTTOKENdoNotLeak0123456789abcdef"
TRAIN = {"data.curriculum": "64:inf", "train.tokens_per_step": "512", "train.steps": "6", "checkpoint.every": "2",
         "train.eval_every": "0", "log.trackers": "[]", "log.progress": "false", "dist.deepspeed_config": "null",
         "train.warmup_steps": "2"}


def train_argv(out_dir, **keys) -> list[str]:
    """``scaleout train`` of the tiny recipe, one process, 6 short steps; ``keys``: train__steps="4", ..."""
    keys = {**TRAIN, "train.out_dir": str(out_dir), **{k.replace("__", "."): v for k, v in keys.items()}}
    return ["train", "configs/tiny.yaml"] + [arg for k, v in keys.items() for arg in (f"--{k}", v)]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in, with huggingface_hub pointed at it the way a user would (HF_ENDPOINT, HF_TOKEN)."""
    import huggingface_hub.constants

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token of this machine's user
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the stand-in speaks the LFS protocol, not Xet
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # read at import
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A real transformers folder (tiny Llama), as ``scaleout train`` exports one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("export")
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    (out / "README.md").write_text("# tiny\n")
    return out


def folder_files(path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), path): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(path) for n in names}


def assert_token_sent_never_written(server, *paths, text=""):
    """Every API request carried the token (so the search below searches for the right thing), and
    no file under ``paths`` nor ``text`` (captured output) holds it."""
    api = [r for r in server.requests if r["path"].startswith("/api/")]
    assert api and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in api)
    assert TOKEN not in text
    for path in paths:
        for name, data in folder_files(path).items():
            assert TOKEN.encode() not in data, name


def test_push_export_folder(hub, export_dir, capsys):
    code = cli(["push", str(export_dir), "--repo-id", "me/tiny", "--private"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert hub.files("me/tiny", "main") == folder_files(export_dir)
    assert hub.repos["me/tiny"]["private"] and json.loads(hub.requests[0]["body"])["visibility"] == "private"
    assert any(r["path"].endswith(".git/info/lfs/objects/batch") for r in hub.requests)  # safetensors went by LFS
    assert "pushed" in out.out and "me/tiny@main" in out.out
    assert_token_sent_never_written(hub, export_dir, text=out.out + out.err)


def test_push_to_a_branch(hub, export_dir, capsys):
    assert cli(["push", str(export_dir), "--repo-id", "me/tiny", "--revision", "v0.1"]) == 0
    assert cli(["push", str(export_dir), "--repo-id", "me/tiny", "--revision", "v0.1"]) == 0  # both exist now
    assert hub.files("me/tiny", "v0.1") == folder_files(export_dir)
    assert hub.files("me/tiny", "main") == {}
    assert not hub.repos["me/tiny"]["private"]
    assert [r["status"] for r in hub.requests if "/branch/" in r["path"]] == [200, 409]


@pytest.mark.parametrize("argv, needle", [
    (["push", "{export}", "--repo-id", "no-namespace"], "--repo-id: 'no-namespace' is not a Hub repo id"),
    (["push", "{export}", "--repo-id", "me/a/b"], "--repo-id: 'me/a/b' is not a Hub repo id"),
    (["push", "{export}", "--repo-id", "me/x", "--revision", "a..b"], "--revision: 'a..b'"),
    (["push", "{empty}", "--repo-id", "me/x"], "is neither an export folder"),
    (["push", "{export}/config.json", "--repo-id", "me/x"], "is not a directory"),
    (["train", "hub.repo_id=me/bad name"], "hub.repo_id: 'me/bad name' is not a Hub repo id"),
    (["train", "hub.push_every=-1", "hub.repo_id=me/x"], "hub.push_every must be >= 0"),
])
def test_bad_input_is_one_line_exit_2(hub, export_dir, tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    if argv[0] == "train":
        argv = train_argv(tmp_path / "run", **{k.replace(".", "__"): v for k, v in (a.split("=") for a in argv[1:])})
    argv = [a.format(export=export_dir, empty=tmp_path / "empty") for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert hub.requests == []  # refused before anything reached the Hub


def test_pusher_retries_then_succeeds(hub, export_dir, capsys):
    hub.fail(2, status=503)
    pusher = hub_mod.HubPusher(hub_mod.HubConfig(repo_id="me/tiny", retries=3, retry_wait=0.05))
    pusher.submit(str(export_dir), "step-000002", "step 2")
    assert pusher.close(timeout=60)
    assert pusher.pushed == ["step-000002"] and pusher.failed == []
    assert [r["status"] for r in hub.requests[:3]] == [503, 503, 200]
    assert hub.files("me/tiny", "step-000002") == folder_files(export_dir)
    assert "warning" not in capsys.readouterr().out


def test_pusher_gives_up_in_one_line_and_waits_a_bounded_time(hub, export_dir, capsys):
    hub.fail_all = 500
    pusher = hub_mod.HubPusher(hub_mod.HubConfig(repo_id="me/tiny", retries=2, retry_wait=0.01))
    pusher.submit(str(export_dir), "main", "final")
    assert pusher.close(timeout=60) and pusher.failed == ["main"]
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "failed 3 times" in warnings[0] and "scaleout push" in warnings[0]
    assert len(hub.requests) == 3

    hub.fail_all, hub.commit_delay = None, 2.0
    slow = hub_mod.HubPusher(hub_mod.HubConfig(repo_id="me/tiny"))
    slow.submit(str(export_dir), "main", "final")
    assert not slow.close(timeout=0.5)
    out = capsys.readouterr().out
    assert "1 push(es) to me/tiny still unfinished after 0.5 s (hub.wait_timeout)" in out
    now = hub_mod.HubPusher(hub_mod.HubConfig(repo_id="me/tiny"))
    now.submit(str(export_dir), "main", "final")
    assert not now.close(timeout=0)  # a run stopped by a signal: one line, no wait
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "1 push(es) to me/tiny still unfinished (not waited for)" in out
    assert slow.close(timeout=60) and now.close(timeout=60)  # they do finish (and touch no later test's server)
    assert [c["revision"] for c in hub.commits] == ["main", "main"]


def _step_gaps(out_dir) -> tuple[list[float], list[dict]]:
    history = json.load(open(os.path.join(out_dir, "ranks", "rank0.json")))["history"]
    return [b["t"] - a["t"] for a, b in zip(history, history[1:])], history


def test_background_push_during_training(hub, tmp_path, capfd):
    """Steps 2 and 4 go to their branches, the final export (step 6) to main, in that order. The Hub
    holds each commit for 5 s and no step waits for it: the largest step gap stays within 2.5 s of the
    same run's without push (a blocking push adds 5 s; the synchronous export at steps 2 and 4 takes
    ~1 s on a loaded 2-core machine), and steps finish while a commit is held."""
    base = tmp_path / "base"
    assert cli(train_argv(base)) == 0
    hub.commit_delay = 5.0
    run = tmp_path / "run"
    assert cli(train_argv(run, hub__repo_id="me/tiny", hub__push_every="1")) == 0
    out = capfd.readouterr()

    assert [c["revision"] for c in hub.commits] == ["step-000002", "step-000004", "main"]
    for step in (2, 4):
        assert hub.files("me/tiny", f"step-{step:06d}") == folder_files(run / "exports" / f"step_{step:06d}")
    assert hub.files("me/tiny", "main") == folder_files(run / "export")
    assert "model.safetensors" in hub.files("me/tiny", "main")

    gaps, history = _step_gaps(run)
    base_gaps, _ = _step_gaps(base)
    print(f"\nstep gaps (s) without push: {' '.join(f'{g:.2f}' for g in base_gaps)}; "
          f"with push, commits held 5 s: {' '.join(f'{g:.2f}' for g in gaps)}")
    assert max(gaps) < max(base_gaps) + 2.5, (gaps, base_gaps)
    held = next(r["time"] for r in hub.requests if "/commit/" in r["path"])
    assert any(held < h["t"] < held + hub.commit_delay for h in history), "no step ended while a commit was held"
    assert_token_sent_never_written(hub, tmp_path, text=out.out + out.err)


def test_failing_hub_does_not_stop_training(hub, tmp_path, capfd):
    hub.fail_all = 500
    run = tmp_path / "run"
    code = cli(train_argv(run, train__steps="4", hub__repo_id="me/tiny", hub__push_every="0", hub__retries="1",
                          hub__retry_wait="0.05"))
    out = capfd.readouterr()
    assert code == 0, out.err[-2000:]
    assert (run / "export" / "model.safetensors").exists()
    warnings = [line for line in (out.out + out.err).splitlines() if "hub" in line and "warning" in line]
    assert len(warnings) == 1 and "me/tiny@main failed 2 times" in warnings[0], warnings
    assert hub.commits == [] and len(hub.requests) == 2
    assert_token_sent_never_written(hub, tmp_path, text=out.out + out.err)


def test_push_checkpoint_and_run_dir(hub, tmp_path, capfd):
    """A checkpoint and a run dir are exported (trainer/hf/export.py) into a temporary folder, then pushed."""
    run = tmp_path / "run"
    assert cli(train_argv(run, train__steps="2")) == 0
    ckpt = run / "checkpoints" / "step_000002"
    assert cli(["push", str(ckpt), "--repo-id", "me/tiny", "--revision", "ckpt"]) == 0
    assert cli(["push", str(run), "--repo-id", "me/tiny"]) == 0
    for rev in ("ckpt", "main"):
        files = hub.files("me/tiny", rev)
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert hub.files("me/tiny", "ckpt") == hub.files("me/tiny", "main")  # the run dir's newest checkpoint
    out = capfd.readouterr()
    assert_token_sent_never_written(hub, tmp_path, text=out.out + out.err)
