"""Issue 17: preflight's memory estimate (trainer/cli/memory.py): its activation count is what
autograd really saves, and the normal runs fit while the ``1b`` preset at 2 CPU processes does not
(the refusal itself is a row of tests/test_preflight.py)."""

import os

import pytest
import torch

from models import build_model, granite_config
from trainer.cli import memory
from trainer.config import load_config
from trainer.config.base import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=704, max_seq_len=512, tie_embeddings=False)


def saved_bytes(arch: dict, vocab: int, rows: int, seq: int) -> int:
    """Bytes autograd keeps for the backward pass of one fp32 forward with the loss (parameters excluded)."""
    model = build_model(granite_config(arch, vocab), seed=0)
    seen = {}

    def keep(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, vocab, (rows, seq))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


@pytest.mark.parametrize("rows, seq", [(8, 64), (2, 256)])  # the same tokens: no seq^2 term
def test_activations_per_layer_match_what_autograd_saves(rows, seq):
    vocab, tokens = 1024, rows * seq
    one, three = saved_bytes(ARCH, vocab, rows, seq), saved_bytes(dict(ARCH, n_layers=3), vocab, rows, seq)
    inside, _ = memory.acts_per_token(ARCH, vocab, checkpointing=False)
    assert abs((three - one) / 2 - 4 * tokens * inside) < 0.02 * 4 * tokens * inside, (three - one) / 2 / tokens / 4


def _check(recipe: str, overrides: list[str], world: int) -> None:
    cfg = load_config(os.path.join(ROOT, recipe), overrides)
    memory.check_memory(cfg, cfg.model.arch(), world)


def test_tiny_and_the_125m_preset_at_2_processes_fit_on_this_machine():
    _check("configs/tiny.yaml", [], 2)
    _check("configs/tiny.yaml", ["--model.preset", "125m"], 2)


def test_1b_at_2_cpu_processes_is_refused_with_the_numbers():
    if torch.cuda.is_available():
        pytest.skip("the CPU budget: every process on this machine's RAM")
    import psutil

    if psutil.virtual_memory().total > 64 * 2**30:
        pytest.skip("a machine with more than 64 GiB of RAM may fit it")
    with pytest.raises(ConfigError, match=r"x 2 = \d+\.\d GiB, more than .* this machine's RAM, which its 2 processes"):
        _check("configs/tiny.yaml", ["--model.preset", "1b"], 2)


def test_estimate_shards_under_zero_and_not_under_ddp():
    kwargs = dict(bucket=5e7, adamw_only=False, bf16=False, ema=True, on_cpu=True, tokens=2048, checkpointing=False)
    arch = dict(ARCH, n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=2048)
    ddp, zero2 = memory.estimate(arch, 4096, world=4, zero_stage=0, **kwargs), \
        memory.estimate(arch, 4096, world=4, zero_stage=2, **kwargs)
    matrices, others = memory.param_counts(arch, 4096)
    assert ddp.optimizer == 4 * matrices + 8 * others and zero2.optimizer == ddp.optimizer / 4
    assert ddp.ema == 4 * (matrices + others) and zero2.ema == ddp.ema / 4
    p = matrices + others  # ZeRO-2: the partition in the weights' and the optimizer's dtype, one reduce bucket
    assert ddp.gradients == 4 * p and zero2.gradients == 8 * p / 4 + 4 * 5e7 and zero2.activations == ddp.activations
    assert memory.estimate(arch, 4096, world=4, zero_stage=2, **dict(kwargs, checkpointing=True)).activations \
        < zero2.activations / 4


def test_processes_on_other_machines_do_not_count_against_this_machines_ram():
    """--num-machines (or the accelerate config's num_machines): one machine's share of the processes."""
    if torch.cuda.is_available():
        pytest.skip("the CPU budget: every process on this machine's RAM")
    import psutil

    if not 12 * 2**30 < psutil.virtual_memory().total < 32 * 2**30:
        pytest.skip("sized for a machine of 12-32 GiB: ~9 GiB per process fits once, not four times")
    cfg = load_config(os.path.join(ROOT, "configs/tiny.yaml"), ["--model.preset", "350m",
                                                               "--train.tokens_per_step", "8192"])
    with pytest.raises(ConfigError, match=r"x 4 = "):
        memory.check_memory(cfg, cfg.model.arch(), 4)
    memory.check_memory(cfg, cfg.model.arch(), 4, machines=4)  # one process per machine
