"""Hub ids for real (issue 18): ``data.source``, ``model.config`` and ``init.from`` given as ``org/name`` are
fetched from a real Hub-compatible server on 127.0.0.1 (olah, tests/olah_hub.py) the way a user points any
client at a Hub (``HF_ENDPOINT``, a fresh ``HF_HOME``): a dataset repo of jsonl shards streams and passes
preflight like local files, a model repo of each architecture starts a run with the weights it holds, and a
missing repo, a missing config.json or a Hub out of reach is one line, exit 2, before any worker starts.

The single-process tests run in this process (``trainer.cli``, ``build_run``), with the constants that
huggingface_hub and datasets read at import read again (``OlahHub.point``); the 2-process run is a real
``scaleout train --accelerate-config`` started with the Hub in its environment.
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, RUN_ENV, assert_no_abort, rank_summaries
from olah_hub import OlahHub, free_port

from models import build_model, model_config, resolve_preset
from trainer.cli import dispatch
from trainer.config import load_config
from trainer.data.tokenizer import bytes_tokenizer

TINY = "configs/tiny.yaml"
ACCEL = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"]
SHARDS = 4  # the dataset's jsonl files; data.partitions below takes whole shards
MODEL_TYPES = ("granite", "granite_swa", "qwen3", "llama")  # llama becomes Granite (models/convert.py)
RUN = ["--data.tokenizer", "bytes", "--data.curriculum", "64:inf", "--train.tokens_per_step", "512",
       "--train.eval_every", "0", "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false",
       "--data.partitions", str(SHARDS), "--data.prefetch", "false", "--mup.enabled", "false"]


def stock_folder(folder, model_type: str) -> str:
    """A stock transformers folder of ``model_type`` as ``save_pretrained`` writes it, with the bytes
    tokenizer (258 tokens): what a user uploads to a Hub."""
    config = model_config(model_type, dict(resolve_preset("tiny"), n_layers=2), 258, eos_token_id=256,
                          bos_token_id=256, pad_token_id=257)
    build_model(config, seed=3).save_pretrained(folder)
    bytes_tokenizer().save_pretrained(folder)
    return str(folder)


def shards() -> dict[str, str]:
    """SHARDS jsonl files of real text (stdlib modules, cut to 3,000 characters), as a dataset repo holds them."""
    from trainer.data.sources import stdlib_files

    files = stdlib_files()[: SHARDS * 12]
    return {f"data/train-{i:04d}-of-{SHARDS:04d}.jsonl": "".join(
        json.dumps({"text": open(p, encoding="utf-8", errors="replace").read()[:3000]}) + "\n"
        for p in files[i::SHARDS]) for i in range(SHARDS)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """olah over a dataset repo (org/docs), one model repo per architecture (org/tiny-TYPE, made from the
    folders under stock/), a model repo without config.json and a dataset without a 'text' column."""
    root = tmp_path_factory.mktemp("olah")
    server = OlahHub(root)
    server.add("datasets", "org/docs", shards())
    server.add("datasets", "org/no-text", {"data/train.jsonl": '{"content": "def f(): pass"}\n' * 8})
    for model_type in MODEL_TYPES:
        server.add("models", f"org/tiny-{model_type}", stock_folder(root / "stock" / model_type, model_type))
    server.add("models", "org/no-config", {"README.md": "# weights to come\n"})
    with server:
        yield server


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """This process pointed at the Hub, with a fresh HF_HOME."""
    monkeypatch.chdir(ROOT)
    hub.point(monkeypatch, tmp_path / "hf_home")
    return hub


def split_at(ids: list[int], eos: int) -> list[list[int]]:
    pieces = [[]]
    for t in ids:
        pieces += [[]] if t == eos else []
        pieces[-1] += [] if t == eos else [t]
    return pieces


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = dispatch.main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_preflight_reads_and_tokenizes_the_first_records_of_a_hub_dataset(online, tmp_path):
    from trainer.cli.preflight import preflight
    from trainer.data import preflight as data_preflight

    encoded = []
    tok = bytes_tokenizer()
    cfg = load_config(TINY, ["--data.source", "org/docs", *RUN, "--train.out_dir", str(tmp_path)])
    data_preflight.check_source(cfg.data, tokenizer=lambda texts: encoded.extend(tok(texts)["input_ids"]))
    first = json.loads(next(iter(shards().values())).splitlines()[0])["text"]
    assert encoded and encoded[0] == tok(first)["input_ids"]  # the dataset's first record, read and tokenized
    assert "GET /datasets/org/docs/resolve/" in online.log()  # ... through the Hub's HTTP
    preflight(cfg, 2)  # and the whole preflight of a run on it


def test_model_config_hub_id_builds_that_class_and_streams_a_hub_dataset(online, tmp_path):
    from trainer.run.build import build_run

    cfg = load_config(TINY, ["--model.config", "org/tiny-qwen3", "--data.source", "org/docs", *RUN,
                             "--train.steps", "2", "--dist.deepspeed_config", "null", "--train.out_dir",
                             str(tmp_path)])
    run = build_run(cfg)
    try:
        model = run.accelerator.unwrap_model(run.model)
        assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.num_hidden_layers == 2
        assert run.meta["source"] == {"hub": "org/docs:train"}
        row = run.loader.next_step()[0]["input_ids"][0].tolist()  # the first step's first row: packed documents
        corpus = "".join(json.loads(line)["text"] for text in shards().values() for line in text.splitlines())
        pieces = [run.tokenizer.decode([t for t in piece if t < 256]) for piece in split_at(row, 256)]
        longest = max(pieces, key=len).strip("\ufffd")  # a row may cut a UTF-8 character at either end
        assert len(longest) >= 20 and longest in corpus, pieces
    finally:
        run.accelerator.end_training()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_init_from_hub_id_has_the_step_0_logits_of_its_folder(online, model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.run.build import build_run

    cfg = load_config(TINY, ["--init.from", f"org/tiny-{model_type}", "--data.source", "org/docs", *RUN,
                             "--train.steps", "2", "--dist.deepspeed_config", "null", "--train.out_dir",
                             str(tmp_path)])
    run = build_run(cfg)
    try:
        model = run.accelerator.unwrap_model(run.model).eval()
        assert run.meta["init_from"] == f"org/tiny-{model_type}"
        assert model.config.model_type == ("granite" if model_type == "llama" else model_type)
        folder = AutoModelForCausalLM.from_pretrained(os.path.join(online.root, "stock", model_type),
                                                      dtype=torch.float32).eval()
        ids = torch.randint(0, 258, (2, 48), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert (model(input_ids=ids).logits - folder(input_ids=ids).logits).abs().max() <= 1e-6
    finally:
        run.accelerator.end_training()
    assert f'"GET /org/tiny-{model_type}/resolve/' in online.log()


BAD = [  # (id, argv, the line's start after "scaleout train: error: ", what follows in it); {url}: the Hub
    ("dataset-repo-missing", ["--data.source", "org/nope"],
     "data.source: 'org/nope' is not a local path and the Hub at {url} has no dataset repo 'org/nope'", "HF_TOKEN"),
    ("val-dataset-repo-missing", ["--data.val_source", "org/nope"],
     "data.val_source: 'org/nope' is not a local path and the Hub at {url} has no dataset repo", "'stdlib'"),
    ("dataset-without-text-column", ["--data.source", "org/no-text"],
     "data.text_field: column 'text' not in the data", "content"),
    ("init-model-repo-missing", ["--init.from", "org/nope"],
     "init.from: 'org/nope' is not a local folder and the Hub at {url} has no model repo 'org/nope'", "Hub id"),
    ("init-from-a-dataset-id", ["--init.from", "org/docs"],
     "init.from: 'org/docs' is not a local folder and the Hub at {url} has no model repo 'org/docs'", "HF_TOKEN"),
    ("init-without-config-json", ["--init.from", "org/no-config"],
     "init.from: 'org/no-config' is not a local folder and its Hub model repo has no config.json",
     "it holds: README.md"),
    ("config-model-repo-missing", ["--model.config", "org/nope"],
     "model.config: 'org/nope' is not a local file and the Hub at {url} has no model repo 'org/nope'", "Hub id"),
    ("config-without-config-json", ["--model.config", "org/no-config"],
     "model.config: 'org/no-config' is not a local file and its Hub model repo has no config.json",
     "it holds: README.md"),
]
UNREACHABLE = [  # the same keys with HF_ENDPOINT at a port nothing listens on
    ("dataset-hub-unreachable", ["--data.source", "org/docs"], "data.source: 'org/docs' is not a local path and "
     "the Hub at {url} cannot be reached (ConnectError", "check HF_ENDPOINT"),
    ("init-hub-unreachable", ["--init.from", "org/tiny-granite"], "init.from: 'org/tiny-granite' is not a local "
     "folder and not in the local cache, while the Hub at {url} cannot be reached (ConnectError", "check HF_ENDPOINT"),
    ("config-hub-unreachable", ["--model.config", "org/tiny-qwen3"], "model.config: 'org/tiny-qwen3' is not a "
     "local file and not in the local cache, while the Hub at {url} cannot be reached (ConnectError",
     "hf download org/tiny-qwen3"),
]


@pytest.mark.parametrize("argv, start, then", [r[1:] for r in BAD + UNREACHABLE], ids=[r[0] for r in BAD + UNREACHABLE])
def test_bad_hub_id_is_one_line_exit_2(argv, start, then, hub, monkeypatch, tmp_path, no_launch, capsys):
    monkeypatch.chdir(ROOT)
    if "cannot be reached" in start:
        hub = OlahHub(tmp_path / "down")
        hub.port = free_port()  # never started
    hub.point(monkeypatch, tmp_path / "hf_home")
    rc, err = run_cli(["train", TINY, *RUN, "--train.steps", "2", "--train.out_dir", str(tmp_path / "run"),
                       *argv, *ACCEL], capsys)
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("scaleout train: error: " + start.format(url=hub.url)), lines[0]
    assert then in lines[0] and not no_launch


@pytest.mark.slow
def test_two_process_run_streams_a_hub_dataset_from_a_hub_model(hub, tmp_path):
    """`scaleout train --accelerate-config` (2 processes, ZeRO-2) with ``data.source: org/docs`` and
    ``init.from: org/tiny-granite``, through olah. The learning rates are 1e-30: each step moves a weight by
    ~1e-30 at most (nothing at all, below float32's resolution, but for the entries that are 0), so the
    checkpoint holds the step-0 weights, which must be the Hub model's within 1e-12 (another init differs by
    ~1e-2)."""
    from safetensors.torch import load_file

    from trainer.state.reader import read_named_tensors

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "train", TINY, *ACCEL, *RUN, "--data.source", "org/docs",
           "--init.from", "org/tiny-granite", "--train.steps", "3", "--train.warmup_steps", "0",
           "--train.schedule", "constant", "--optim.lr", "1e-30", "--optim.adamw_lr", "1e-30", "--ema.enabled",
           "false", "--checkpoint.every", "3", "--train.out_dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=hub.env(tmp_path / "hf_home", RUN_ENV), capture_output=True, text=True,
                       timeout=900)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-6000:]
    assert_no_abort(output)
    assert [s["num_processes"] for s in rank_summaries(out)] == [2, 2]
    checkpoint = sorted(glob.glob(str(out / "checkpoints" / "step_*")))[-1]
    meta = json.load(open(os.path.join(checkpoint, "meta.json")))
    assert meta["source"] == {"hub": "org/docs:train"} and meta["init_from"] == "org/tiny-granite"
    served = online_files(hub.log(), "datasets/org/docs")
    assert served >= set(shards()), served  # every shard was read from the Hub, by the workers' partitions
    losses = [h["loss"] for h in json.load(open(out / "ranks" / "rank0.json"))["history"]]
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses))), losses
    stock = load_file(os.path.join(hub.root, "stock", "granite", "model.safetensors"))
    weights = read_named_tensors(checkpoint, whole=True)
    assert weights and set(weights) <= set(stock)
    assert max((weights[name] - stock[name]).abs().max().item() for name in weights) <= 1e-12


def online_files(log: str, repo: str) -> set[str]:
    """The files of ``repo`` (e.g. datasets/org/docs) that olah's access log shows served (GET, 200)."""
    marker = f'"GET /{repo}/resolve/'
    return {line.split(marker, 1)[1].split(" ", 1)[0].split("/", 1)[1] for line in log.splitlines()
            if marker in line and '" 200' in line}
