"""`scaleout export`, `generate` and `eval` on real checkpoints, in this process (no launcher, no GPU).

Two runs make the checkpoints: the suite's shared 2-process ZeRO-2 run with the EMA (conftest's
``zero2_reference``, launched: the tests that read it are ``slow``) and a short one-process run here
without DeepSpeed and without EMA. The references come from the trainer side: each run's own
end-of-run export (written from ``accelerator.get_state_dict`` and ``ShardEMA.assemble``, not from
the checkpoint readers) and the per-rank weight hashes the run wrote (``write_rank_summary`` in
trainer/run/meters.py)."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from conftest import SECRETS  # noqa: E402  (tests/ is on sys.path)

from trainer.cli import main  # noqa: E402

COMMON = ["--train.eval_every", "0", "--data.curriculum", "64:inf", "--train.tokens_per_step", "512",
          "--train.warmup_steps", "1", "--log.trackers", "[]", "--log.progress", "false", "--train.eval_batches", "2"]
TEXT = "def main():\n    return 0\n"


def cli(argv: list[str]) -> int:
    """``scaleout ARGV`` in this process: its exit code (argparse's errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """`scaleout train` in one process, 2 steps, no DeepSpeed, no EMA: (run directory, console output)."""
    out = tmp_path_factory.mktemp("single")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **SECRETS)
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--train.out_dir", str(out), *COMMON,
           "--train.steps", "2", "--dist.deepspeed_config", "null", "--ema.enabled", "false"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-6000:]
    return out, r.stdout


@pytest.fixture(scope="module")
def zero2(zero2_reference):
    """The shared 2-process ZeRO-2 run (10 steps, EMA decay 0.9, a checkpoint every 2): (run directory,
    console output)."""
    zero2_reference.summaries()
    return Path(zero2_reference.out_dir), zero2_reference.console()


@pytest.fixture(scope="module")
def runs(request):
    """Each run, started on first use: ``runs["single"]``, ``runs["zero2"]``."""
    return _Lazy(lambda name: request.getfixturevalue(name))


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """``scaleout export`` of a run directory (newest checkpoint; --weights auto or raw), made on first use:
    ``exported[("zero2", "raw")]``."""
    out = tmp_path_factory.mktemp("exports")

    def export(key):
        name, weights = key
        dest = out / f"{name}_{weights}"
        assert cli(["export", str(runs[name][0]), "--out", str(dest), "--weights", weights]) == 0
        return str(dest)
    return _Lazy(export)


class _Lazy(dict):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def logits(folder):
    model, tok = load(folder)
    with torch.no_grad():
        return model(tok(TEXT, return_tensors="pt").input_ids).logits


@pytest.mark.parametrize("name,weights", [pytest.param("zero2", "auto", marks=pytest.mark.slow), ("single", "auto")])
def test_export_logits_equal_the_runs_own_export(runs, exported, name, weights):
    """ZeRO-2 with EMA: the checkpoint's EMA slices put together by the reader give the logits of the
    EMA the run assembled itself; one process, no EMA: the raw weights."""
    ref = logits(os.path.join(runs[name][0], "export"))
    got = logits(exported[(name, weights)])
    diff = (got - ref).abs().max().item()
    print(f"{name}: max |logit difference| export vs the run's own export: {diff:.2e}")
    assert diff <= 1e-5
    assert "(ema weights)" in runs[name][1] if name == "zero2" else "(raw weights)" in runs[name][1]


@pytest.mark.slow
def test_raw_export_holds_the_trainers_weights(runs, exported):
    """The raw export of the ZeRO-2 checkpoint: the same bytes as the weights each rank hashed at the
    end of the run (trainer/run/loop.py write_rank_summary), and not the EMA."""
    model, _ = load(exported[("zero2", "raw")])
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().numpy().tobytes())
    for r in range(2):
        assert json.load(open(runs["zero2"][0] / "ranks" / f"rank{r}.json"))["weights_sha256"] == h.hexdigest()
    assert (logits(exported[("zero2", "raw")]) - logits(exported[("zero2", "auto")])).abs().max() > 1e-4


@pytest.mark.slow
def test_folder_card_modes_and_generation(runs, exported):
    from huggingface_hub import ModelCard
    from transformers import GenerationConfig, pipeline

    folders = [exported[("zero2", "auto")], os.path.join(runs["zero2"][0], "export"), exported[("single", "auto")]]
    for folder in folders:
        assert sorted(os.listdir(folder)) == ["README.md", "config.json", "generation_config.json",
                                              "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        for name in os.listdir(folder):
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o644, name
            data = open(os.path.join(folder, name), "rb").read()
            assert not any(s.encode() in data for s in SECRETS.values()), name
        model, tok = load(folder)
        gen = GenerationConfig.from_pretrained(folder)
        assert gen.use_cache is True and model.config.use_cache is True
        assert (gen.eos_token_id, gen.bos_token_id, gen.pad_token_id) == (tok.eos_token_id, tok.bos_token_id,
                                                                          tok.pad_token_id)
        assert tok.model_max_length == model.config.max_position_embeddings == 512
        text = pipeline("text-generation", model=model, tokenizer=tok)("def", max_new_tokens=8,
                                                                       do_sample=False)[0]["generated_text"]
        assert text.startswith("def") and len(text) > 3

    model, _ = load(folders[0])
    card = ModelCard.load(os.path.join(folders[0], "README.md"))
    body = card.text
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.to_dict()["scaleout"] == {"step": 10, "tokens_seen": 10 * 2048, "weights": "ema"}
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,} |" in body
    assert "| tokens trained | 20,480 |" in body and "GraniteForCausalLM" in body
    assert "`64:8K,128:inf`" in body and "| 0 | 64 | 0 | 8K |" in body and "| 1 | 128 | 8K | end |" in body
    assert "| exported weights | EMA |" in body and "| decay | 0.9 |" in body
    assert "| Muon lr (hidden matrices) | 0.02 |" in body and "muP | on: base width 128" in body
    assert "ds_configs/zero2.json" in body and "| processes | 2 |" in body
    assert f"| torch | {torch.__version__} |" in body and "AutoModelForCausalLM.from_pretrained" in body
    val = re.search(r"step 10: val/loss ([\d.]+), val/loss_ema ([\d.]+)", runs["zero2"][1])
    assert f"validation loss (raw weights) | {val.group(1)} (step 10)" in body
    assert f"validation loss (EMA weights) | {val.group(2)} (step 10)" in body
    assert re.search(r"\| train loss \| \d+\.\d{4} \(step 10\) \|", body)
    single = ModelCard.load(os.path.join(folders[2], "README.md")).text
    assert "No EMA was kept" in single and "| ZeRO (DeepSpeed config) | none |" in single


@pytest.mark.slow
def test_default_out_and_fallback(runs, tmp_path, capfd):
    """The default folder is RUN/exports/step_N_WEIGHTS; an export of another step never replaces it;
    a damaged newest checkpoint falls back to the previous one with one warning."""
    run = tmp_path / "run"
    shutil.copytree(runs["zero2"][0] / "checkpoints", run / "checkpoints")
    assert cli(["export", str(run)]) == 0
    assert os.path.exists(run / "exports" / "step_000010_ema" / "model.safetensors")
    assert cli(["export", str(run)]) == 0  # the same step again: replaced
    capfd.readouterr()
    older = str(run / "checkpoints" / "step_000008")
    assert cli(["export", older, "--out", str(run / "exports" / "step_000010_ema")]) == 2
    err = capfd.readouterr().err
    assert "holds the export of step 10" in err and len(err.splitlines()) == 1
    with open(run / "checkpoints" / "step_000010" / "state" / "rank1.pt", "r+b") as f:
        f.truncate(100)
    assert cli(["export", str(run), "--weights", "raw"]) == 0
    err = capfd.readouterr().err
    assert "step_000010 is damaged" in err and len(err.splitlines()) == 1
    assert os.path.exists(run / "exports" / "step_000008_raw" / "model.safetensors")


def _damaged_run(runs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs["single"][0] / "checkpoints", bad / "checkpoints")
    for ckpt in os.listdir(bad / "checkpoints"):
        shutil.rmtree(bad / "checkpoints" / ckpt / "data")
    return bad


@pytest.mark.parametrize("case,argv,expect", [
    ("missing", ["export", "{tmp}/nope"], "does not exist"),
    ("not a checkpoint", ["export", "{tmp}"], "is not a checkpoint, a run directory or an exported model"),
    ("an export", ["export", "{single}/export"], "already an exported model"),
    ("no intact checkpoint", ["export", "{bad}"], "has no intact checkpoint"),
    ("no EMA", ["export", "{single}", "--weights", "ema"], "has no EMA"),
    ("bad --weights", ["export", "{single}", "--weights", "best"], "invalid choice"),
    ("abbreviated flag", ["export", "{single}", "--weight", "raw"], "unrecognized arguments: --weight"),
    ("generate: missing", ["generate", "{tmp}/nope", "--prompt", "x"], "does not exist"),
    ("eval: missing data", ["eval", "{single}/export", "--data.source", "{tmp}/none.txt"], "data.source"),
])
def test_bad_input_is_one_line_exit_2(runs, tmp_path, capfd, case, argv, expect):
    paths = {"tmp": str(tmp_path), "single": str(runs["single"][0]),
             "bad": str(_damaged_run(runs, tmp_path)) if case == "no intact checkpoint" else ""}
    capfd.readouterr()
    assert cli([a.format(**paths) for a in argv]) == 2
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "error:" in err and expect in err, err
    assert "Traceback" not in err


def test_eval_matches_a_direct_computation(runs, exported, tmp_path, capfd):
    """`scaleout eval --json` on an export: the loss of the source's tokens cut into rows, computed here
    with transformers alone; on the run directory (exported to a temporary folder) the same."""
    data = tmp_path / "doc.txt"
    data.write_text(open(os.path.join(ROOT, "trainer", "state", "ema.py")).read())
    folder = exported[("single", "auto")]
    args = ["--data.source", str(data), "--batches", "2", "--batch-size", "2", "--seq-len", "32", "--json"]
    capfd.readouterr()
    assert cli(["eval", folder, *args]) == 0
    got = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    model, tok = load(folder)
    ids = tok(data.read_text(), add_special_tokens=False).input_ids + [tok.eos_token_id]
    rows = torch.tensor(ids[:128]).view(4, 32)
    with torch.no_grad():
        want = sum(model(input_ids=b, labels=b).loss.item() for b in rows.split(2)) / 2
    print(f"eval loss {got['loss']:.6f}, direct {want:.6f}")
    assert got["tokens"] == 128 and abs(got["loss"] - want) < 1e-5
    assert abs(got["perplexity"] - torch.tensor(want).exp().item()) < 1e-2
    assert cli(["eval", str(runs["single"][0]), *args[:-1]]) == 0  # the run directory, one line
    line = capfd.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"loss {got['loss']:.4f} perplexity {got['perplexity']:.2f} (128 tokens"), line


def test_generate_prints_text(exported, capfd):
    capfd.readouterr()
    assert cli(["generate", exported[("single", "auto")], "--prompt", "def main", "--max-new-tokens", "8",
                "--temperature", "0.7", "--seed", "1"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("def main") and len(out.strip()) > len("def main")


@pytest.mark.slow
def test_bad_input_in_a_real_process(runs, tmp_path):
    """As a user meets it: a checkpoint exported on the fly (transformers imports DeepSpeed, which would
    warn), then too little data for one row: exit 2 and one stderr line."""
    data = tmp_path / "short.txt"
    data.write_text("x = 1\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "eval", str(runs["zero2"][0]), "--data.source",
                        str(data), "--seq-len", "64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.startswith("scaleout eval: error: data.source") and len(r.stderr.splitlines()) == 1, r.stderr
