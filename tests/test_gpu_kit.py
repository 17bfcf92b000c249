"""The CPU-testable parts of the GPU throughput work (issue 9): padded vocabulary, fused AdamW on CUDA
only, compilation, the data prefetcher and the step metrics."""

import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import torch

from models import build_model, granite_config, padded_vocab, resolve_preset
from trainer.config import load_config
from trainer.data.tokenizer import bytes_tokenizer
from trainer.run.build import build_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vocab_is_padded_and_the_export_loads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = bytes_tokenizer()
    assert len(tok) % 128 != 0  # else the test shows nothing
    cfg = load_config("configs/tiny.yaml", ["--data.tokenizer", "bytes", "--train.out_dir", str(tmp_path / "run")])
    mc = build_model_config(cfg, tok)
    assert mc.vocab_size == padded_vocab(len(tok), 128) and mc.vocab_size % 128 == 0 and mc.vocab_size >= len(tok)
    off = load_config("configs/tiny.yaml", ["--data.tokenizer", "bytes", "--model.pad_vocab_multiple", "1",
                                            "--train.out_dir", str(tmp_path / "run")])
    assert build_model_config(off, tok).vocab_size == len(tok)

    model = build_model(mc, seed=0).eval()
    ids = torch.tensor([tok.encode("def f(x):\n    return x")])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], mc.vocab_size) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "export")
    tok.save_pretrained(tmp_path / "export")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert again.config.vocab_size == mc.vocab_size and len(tok2) == len(tok)
    prompt = tok2("def ", return_tensors="pt").input_ids
    gen = again.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert gen.shape == (1, prompt.shape[1] + 5)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_padded_vocab():
    assert [padded_vocab(n, 128) for n in (1, 128, 129, 27389)] == [128, 128, 256, 27392]
    assert padded_vocab(27389, 1) == 27389


def test_adamw_is_fused_on_cuda_only(tmp_path):
    from trainer.optim import build_optimizer

    cfg = load_config("configs/tiny.yaml", ["--optim.name", "adamw", "--train.out_dir", str(tmp_path)])
    model = build_model(build_model_config(cfg, bytes_tokenizer()), seed=0)
    gpu, cpu = build_optimizer(model, cfg, cuda=True), build_optimizer(model, cfg, cuda=False)
    assert all(g["fused"] and not g["foreach"] for g in gpu.param_groups)
    assert all(not g["fused"] and g["foreach"] is False for g in cpu.param_groups)


@pytest.mark.parametrize("preset", ["125m", "1b"])
def test_flops_per_token_matches_a_hand_count_of_the_granite_matmuls(preset):
    from transformers import GraniteForCausalLM

    from trainer.run.metrics import flops_per_token, matmul_params

    vocab, seq = padded_vocab(27389, 128), 1024
    arch = resolve_preset(preset)
    with torch.device("meta"):  # shapes only: no memory, no init
        model = GraniteForCausalLM(granite_config(arch, vocab))
    d, L, ff = arch["d_model"], arch["n_layers"], arch["d_ff"]
    kv = arch["n_kv_heads"] * d // arch["n_heads"]
    # Per token and layer, forward: q and o (d x d each), k and v (d x kv each), gate and up (d x ff),
    # down (ff x d): 2 FLOPs per weight. Attention: scores q.k and the weighted sum of v, 2 * seq * d
    # each (no causal discount). Then the readout (d x vocab); the input embedding is a lookup.
    # Training = forward + backward (2x forward) = 3x forward.
    layer_weights = 2 * d * d + 2 * d * kv + 3 * d * ff
    forward = L * (2 * layer_weights + 2 * 2 * seq * d) + 2 * d * vocab
    assert flops_per_token(matmul_params(model), L, d, seq) == 3 * forward
    if preset == "125m":
        assert forward == 12 * (2 * (4 * 768 * 768 + 3 * 768 * 2048) + 4 * 1024 * 768) + 2 * 768 * 27392
    else:
        assert not arch["tie_embeddings"] and kv == 512


PEAK_PROBE = """
import torch
from trainer.run.metrics import peak_memory_gb

before = peak_memory_gb()
big = torch.ones(2**26)  # 256 MiB, written, so resident
print(before, peak_memory_gb())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
def test_peak_memory_on_cpu_is_the_peak_resident_set():
    """On CPU ``peak_memory_gb`` is the process's own peak resident set: in a fresh process started by
    this (large) pytest process it starts below the parent's peak (``ru_maxrss`` would inherit it
    across the exec) and grows by what a 256 MiB tensor makes resident."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(float, out.stdout.split())
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    assert 0.05 < before < 0.5 and before < parent_peak, (before, parent_peak)  # torch imported: ~0.23 GB
    assert 0.26 <= after - before <= 0.30, (before, after)  # 2**28 bytes = 0.268 GB, plus allocator slack


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from trainer.run.build import build_initialized_model

    def grads(*extra):
        cfg = load_config("configs/tiny.yaml", ["--data.tokenizer", "bytes", "--train.out_dir", str(tmp_path), *extra])
        model = build_initialized_model(cfg, build_model_config(cfg, bytes_tokenizer())).train()
        ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        ckpt = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}, ckpt

    loss, want, off = grads()
    loss_ckpt, got, on = grads("--train.activation_checkpointing", "true")
    assert on and not off and loss_ckpt == loss
    assert all(torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7) for n in want)


# Two single-process runs; a cold inductor cache compiles C++ for minutes. The DeepSpeed path is the
# recipes'; the plain-module path (`--dist.deepspeed_config null`) passed the same test when written
# and is left out of the suite for its time.
@pytest.mark.slow
@pytest.mark.parametrize("ds", ["ds_configs/zero2.json"])
def test_compiled_and_eager_runs_give_the_same_losses(tmp_path, ds):
    """train.compile true on CPU (inductor's C++ backend, fp32): the same losses as eager to 1e-5, across a
    curriculum phase change (one recompile, said once per phase), through checkpoint and export."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++) and none is installed")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    # Inductor compiles in this process, not in a pool of worker processes that each import torch:
    # 52 s instead of 75 s for this test with a cold cache on 2 cores (the compiled code is the same).
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")

    def start(compile_):
        out = tmp_path / compile_
        cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--train.steps", "3",
               "--train.compile", compile_, "--train.out_dir", str(out), "--data.curriculum", "64:4K,128:inf",
               "--train.tokens_per_step", "2048", "--log.trackers", "[]", "--log.progress", "false",
               "--train.eval_every", "0", "--dist.deepspeed_config", ds,
               "--model.n_layers", "1"]  # inductor's time grows with the graph; one block is the same code
        return out, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def result(out, proc):
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-4000:]
        assert (out / "export" / "model.safetensors").exists()
        history = json.load(open(out / "ranks" / "rank0.json"))["history"]
        assert all(h["data_wait_s"] >= 0 and h["peak_memory_gb"] > 0 for h in history)  # the new step metrics
        return stdout, [h["loss"] for h in history], [h["seq_len"] for h in history]

    runs = {c: start(c) for c in ("true", "false")}  # one process each, side by side on the two cores
    compiled_out, compiled, lens = result(*runs["true"])
    eager_out, eager, eager_lens = result(*runs["false"])
    assert lens == eager_lens == [64, 64, 128]
    assert compiled == pytest.approx(eager, abs=1e-5)
    assert compiled_out.count("this phase's first step recompiles") == 2 and "recompiles" not in eager_out
