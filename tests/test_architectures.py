"""``model.type`` (issue 18, its first part): the dense transformers classes beside Granite -- granite_swa
(sliding-window layers and attention sinks, with the muP multipliers), llama and qwen3 (standard
parametrization only) -- train, checkpoint, resume bit-exact and export as their own stock class."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from models import MOE_TYPES, MUP_TYPES, build_model, model_config, resolve_preset
from trainer.config import load_config
from trainer.optim.matrices import param_splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
CLASSES = {"granite_swa": "GraniteSWAForCausalLM", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "granitemoe": "GraniteMoeForCausalLM", "granitemoe_swa": "GraniteMoeSWAForCausalLM",
           "qwen3_moe": "Qwen3MoeForCausalLM",
           "deepseek_v3": "DeepseekV3ForCausalLM"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from trainer.data.sources import stdlib_files

    folder = tmp_path_factory.mktemp("corpus")
    for i in range(2):
        with open(folder / f"part{i}.jsonl", "w") as f:
            for path in stdlib_files()[i:80:2]:
                f.write(json.dumps({"text": open(path, encoding="utf-8", errors="replace").read()[:3000]}) + "\n")
    return str(folder)


def config(corpus, model_type, out_dir, *extra, mup: bool | None = None):
    mup = "true" if (model_type in MUP_TYPES if mup is None else mup) else "false"
    return load_config(TINY, ["--model.type", model_type, "--mup.enabled", mup, "--data.source", corpus,
                              "--data.tokenizer", "bytes", "--data.curriculum", "64:inf", "--train.tokens_per_step",
                              "512", "--train.steps", "4", "--train.eval_every", "0", "--train.eval_batches", "1",
                              "--dist.deepspeed_config", "null", "--log.trackers", "[]", "--log.progress", "false",
                              "--data.partitions", "2", "--model.n_layers", "2", "--data.prefetch", "false",
                              "--checkpoint.every", "2", "--export.weights", "raw", "--train.out_dir", str(out_dir),
                              *extra])


def summary(out_dir) -> dict:
    return json.load(open(os.path.join(out_dir, "ranks", "rank0.json")))


@pytest.mark.parametrize("model_type", list(CLASSES))
def test_each_type_trains_and_exports_as_its_stock_class(corpus, model_type, tmp_path):
    from trainer.run.loop import train
    from trainer.state.reader import read_buffers, read_named_tensors

    result = train(config(corpus, model_type, tmp_path))
    assert result["exit_code"] == 0 and result["step"] == 4
    losses = [h["loss"] for h in summary(tmp_path)["history"]]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0], losses
    exported = AutoModelForCausalLM.from_pretrained(result["export_dir"], dtype=torch.float32)
    assert type(exported).__name__ == CLASSES[model_type] and exported.config.model_type == model_type
    # the export holds the checkpoint's weights (raw), and a model built from them computes the same logits
    master = read_named_tensors(os.path.join(tmp_path, "checkpoints", "step_000004"))
    params = dict(exported.named_parameters())
    assert set(master) == set(params)
    for name, tensor in master.items():
        assert torch.equal(params[name].detach(), tensor), name
    card = open(os.path.join(result["export_dir"], "README.md")).read()
    if model_type in MOE_TYPES:  # the card gives total and active parameters
        from models import active_params, count_params

        assert f"| parameters | {count_params(exported):,} |" in card, card
        assert f"| active parameters per token | {active_params(exported):,} |" in card, card
    buffers = read_buffers(os.path.join(tmp_path, "checkpoints", "step_000004"))  # deepseek_v3's expert biases
    assert bool(buffers) == (model_type == "deepseek_v3")
    for name, tensor in buffers.items():
        assert tensor.abs().max() > 0 and torch.equal(dict(exported.named_buffers())[name], tensor), name


@pytest.mark.parametrize("model_type", ["granite_swa", "qwen3", "granitemoe", "deepseek_v3"])
def test_stopped_and_resumed_run_is_bit_exact(corpus, model_type, tmp_path):
    from trainer.run.loop import train

    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train(config(corpus, model_type, whole))["exit_code"] == 0
    assert train(config(corpus, model_type, split, "--train.stop_at_step", "2"))["exit_code"] == 0
    assert train(config(corpus, model_type, split))["exit_code"] == 0
    keys = ("weights_sha256", "master_sha256", "optimizer_sha256")
    assert {k: summary(split)[k] for k in keys} == {k: summary(whole)[k] for k in keys}


def test_qwen3_head_dim_follows_the_width_and_granite_swa_keeps_its_window_and_multipliers():
    arch = resolve_preset("tiny")
    qwen = model_config("qwen3", arch, 384)
    assert qwen.head_dim == arch["d_model"] // arch["n_heads"] == 32  # the class's default is 128
    swa = model_config("granite_swa", arch, 384, sliding_window=64, multipliers={"logits_scaling": 2.0})
    assert swa.sliding_window == 64 and swa.logits_scaling == 2.0 and "sliding_attention" in swa.layer_types
    assert build_model(swa).config._attn_implementation == "eager"  # the class's only attention


def test_muon_refuses_a_parameter_it_cannot_split_into_matrices():
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 16, 8))  # (E, 2 d_ff, d): E matrices

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), Experts())
    assert param_splits(model, ["0.weight"]) == {"0.weight": (1, (8, 27))}  # a convolution: (out, in * k * k)
    # an expert stack of a class the table does not know: refused, not guessed
    with pytest.raises(ValueError, match=r"1.gate_up_proj is a 3-D \(4, 16, 8\) parameter of Experts"):
        param_splits(model, ["0.weight", "1.gate_up_proj"])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "deepseek_v3"])
def test_two_process_zero2_run_matches_the_lone_process_run_and_resumes_elastically(corpus, model_type, tmp_path):
    """qwen3, and deepseek_v3 (MLA, expert stacks, the bias update from loads summed over the ranks),
    under the launcher (2 processes, ZeRO-2, sharded Muon) against one process (ZeRO-2 of 1): the
    same batches and, to 1e-5, the same losses; a 2-process run stopped at step 2 and resumed by one
    process continues the same trajectory."""
    import subprocess
    import sys

    from conftest import RUN_ENV, assert_no_abort

    args = ["-m", "trainer.cli", "train", "configs/tiny.yaml", "--model.type", model_type, "--mup.enabled", "false",
            "--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
            "--train.tokens_per_step", "1024", "--train.steps", "4", "--train.eval_every", "0",
            "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false", "--data.partitions", "2",
            "--model.n_layers", "2"]
    two = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"]
    runs = {}
    for name, out, extra in (("lone", "lone", []), ("zero2", "zero2", two),
                             ("stopped", "elastic", [*two, "--train.stop_at_step", "2"]), ("resumed", "elastic", [])):
        r = subprocess.run([sys.executable, *args, *extra, "--train.out_dir", str(tmp_path / out)], cwd=ROOT,
                           env=RUN_ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert_no_abort(r.stdout + r.stderr)
        runs[name] = summary(tmp_path / out)["history"]
    assert "resharded from W=2 to W=1" in r.stdout + r.stderr
    for name, steps in (("zero2", slice(0, 4)), ("resumed", slice(2, 4))):
        assert [h["batch_sha"] for h in runs[name]] == [h["batch_sha"] for h in runs["lone"][steps]], name
        for ours, theirs in zip(runs[name], runs["lone"][steps]):
            assert abs(ours["loss"] - theirs["loss"]) < 1e-5, (name, ours["loss"], theirs["loss"])


@torch.no_grad()
def test_sliding_window_mask_is_exact():
    """granite_swa's sliding layers: with one sliding layer of window w, position t's logits do not move
    when a token before t - w + 1 changes, and do move when one inside the window changes; a sequence
    no longer than w gives the logits of the same weights with full attention everywhere."""
    arch = dict(resolve_preset("tiny"), n_layers=1)
    window = 8
    sliding = model_config("granite_swa", arch, 300, sliding_window=window)
    sliding.layer_types = ["sliding_attention"]
    model = build_model(sliding, seed=0).eval()
    ids = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    t = 20
    base = model(input_ids=ids).logits[0, t]
    outside, inside = ids.clone(), ids.clone()
    outside[0, t - window] = (ids[0, t - window] + 1) % 300  # one before the window: not seen
    inside[0, t - window + 1] = (ids[0, t - window + 1] + 1) % 300  # the window's first token
    assert torch.equal(model(input_ids=outside).logits[0, t], base)
    assert (model(input_ids=inside).logits[0, t] - base).abs().max() > 1e-4
    full = model_config("granite_swa", arch, 300, sliding_window=window)
    full.layer_types = ["full_attention"]
    dense = build_model(full, seed=0).eval()
    dense.load_state_dict(model.state_dict())
    short = ids[:, :window]
    assert (model(input_ids=short).logits - dense(input_ids=short).logits).abs().max() < 1e-6
    assert (model(input_ids=ids).logits[0, t] - dense(input_ids=ids).logits[0, t]).abs().max() > 1e-4


def test_a_window_longer_than_the_first_phase_is_allowed_and_said_once(capsys):
    from trainer.cli.preflight import check_model_type

    check_model_type(load_config(TINY, ["--model.type", "granite_swa", "--model.sliding_window", "64"]))
    assert capsys.readouterr().err == ""  # 64 < the first phase's 128
    check_model_type(load_config(TINY, ["--model.type", "granite_swa"]))  # the class's 128; phases 128, 256
    assert capsys.readouterr().err.splitlines() == [
        "scaleout train: note: model.sliding_window 128 >= the first phase's sequence length 128: the "
        "sliding-window layers see whole sequences until the phase of length 256"]


@pytest.mark.parametrize("model_type", ["granite_swa", "qwen3", "granitemoe", "deepseek_v3"])
def test_init_from_a_stock_folder_of_the_class_keeps_its_class_and_logits(corpus, model_type, tmp_path):
    from models import resolve_moe
    from trainer.data.tokenizer import bytes_tokenizer
    from trainer.run.build import build_run
    from trainer.run.loop import train

    arch = dict(resolve_preset("tiny"), n_layers=2)
    stock = build_model(model_config(model_type, arch, 258, moe=resolve_moe(model_type, arch),
                                     eos_token_id=256, bos_token_id=256, pad_token_id=257), seed=3).eval()
    for name, buffer in stock.named_buffers():  # deepseek_v3's expert biases, as a trained model has them
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(torch.linspace(-0.01, 0.01, buffer.numel()))
    stock.save_pretrained(tmp_path / "stock")
    bytes_tokenizer().save_pretrained(tmp_path / "stock")
    cfg = config(corpus, model_type, tmp_path / "run", "--init.from", str(tmp_path / "stock"), mup=False)
    run = build_run(cfg)
    model = run.accelerator.unwrap_model(run.model).eval()
    assert type(model) is type(stock)
    ids = torch.randint(0, 258, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - stock(input_ids=ids).logits).abs().max() <= 1e-6
    run.accelerator.end_training()
    assert train(cfg)["exit_code"] == 0


def save_config(folder, model_type: str, **fields):
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **fields).save_pretrained(folder)
    return str(folder)


MISTRAL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, sliding_window=32, vocab_size=1000)


def test_model_config_trains_any_causal_lm_class(corpus, tmp_path):
    """A class outside model.type (Mistral): built from its config.json, the tokenizer's vocabulary, exported
    as its own class."""
    from trainer.run.loop import train

    source = save_config(tmp_path / "mistral", "mistral", **MISTRAL)
    cfg = load_config(TINY, ["--model.config", os.path.join(source, "config.json"), "--mup.enabled", "false",
                             "--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
                             "--train.tokens_per_step", "512", "--train.steps", "2", "--train.eval_every", "0",
                             "--train.eval_batches", "1", "--dist.deepspeed_config", "null", "--log.trackers", "[]",
                             "--log.progress", "false", "--data.partitions", "2", "--train.out_dir",
                             str(tmp_path / "run")])
    from trainer.cli.preflight import preflight

    preflight(cfg, 1)  # the launcher's checks pass: its architecture numbers, the curriculum, the memory
    result = train(cfg)
    assert result["exit_code"] == 0
    exported = AutoModelForCausalLM.from_pretrained(result["export_dir"])
    assert type(exported).__name__ == "MistralForCausalLM"
    assert (exported.config.hidden_size, exported.config.sliding_window) == (64, 32)
    assert exported.config.vocab_size == 384 and exported.config.eos_token_id == 256  # bytes: 258 -> 384


def test_model_config_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from trainer.config.base import ConfigError
    from trainer.hf.config_source import read_model_config

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-mistral"
    save_config(repo / "snapshots" / commit, "mistral", **MISTRAL)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert read_model_config("acme/tiny-mistral").model_type == "mistral"
    with pytest.raises(ConfigError, match="model.config: 'acme/missing' is not a local file") as e:
        read_model_config("acme/missing")
    assert "\n" not in str(e.value)


def test_init_from_a_deepseek_v3_checkpoint_brings_its_trained_expert_biases(corpus, tmp_path):
    from trainer.run.build import build_run
    from trainer.run.loop import train
    from trainer.state.reader import read_buffers

    assert train(config(corpus, "deepseek_v3", tmp_path / "first"))["exit_code"] == 0
    ckpt = tmp_path / "first" / "checkpoints" / "step_000004"
    saved = read_buffers(str(ckpt))
    assert saved and all(t.abs().max() > 0 for t in saved.values())
    run = build_run(config(corpus, "deepseek_v3", tmp_path / "second", "--init.from", str(ckpt)))
    held = dict(run.accelerator.unwrap_model(run.model).named_buffers())
    assert all(torch.equal(held[name], t) for name, t in saved.items())
    run.accelerator.end_training()
