"""Will the model fit? Preflight's estimate of one process's memory, compared with the device's, so
that a model too big for the machine is one line and exit 2 instead of "can't allocate" in every rank.

One process holds (P parameters; W processes share ZeRO's partitions; DDP or no DeepSpeed: W = 1):

- weights: the model's parameters (bf16 under DeepSpeed with bf16, else fp32) plus, under ZeRO-1/2,
  DeepSpeed's fp32 master partition (4P/W; DeepSpeed clones it even when the model is fp32);
- gradients: ZeRO-2 keeps only its partition (in the weights' dtype and in fp32 for the optimizer)
  and one reduce bucket; ZeRO-1 and DDP keep them whole;
- the optimizer's shard: Muon's momentum (4 bytes per hidden-matrix parameter) and AdamW's two
  moments (8 bytes per other parameter; every parameter with ``optim.name adamw``), over W;
- the EMA: fp32, sharded like the optimizer; it lives in host RAM, so it counts on CPU only;
- activations at the first curriculum phase's micro-batch (tokens per micro-batch do not change with
  the phase: ``train.tokens_per_step / (W x train.grad_accum)``), ``acts_per_token`` below;
- workspace: one fp32 copy of the weights for the transients (Muon's gathered matrices and Newton-Schulz
  temporaries, the gradient norm, the export's full state dict);
- RUNTIME per process: the interpreter, torch, DeepSpeed, the tokenizer, the data workers (or the
  CUDA context).

Checked against the peak resident set of real 2-process ZeRO-2 runs here (``train/peak_memory_gb``):
configs/tiny.yaml with 2 layers 0.87 GB measured, 0.94 GB estimated; ``--model.preset 125m`` (vocab
4,096, 2,048 tokens per micro-batch) 4.6 GB measured, 4.2 GB estimated. A rough bound, not a promise.

``acts_per_token`` is what autograd saves, measured with ``torch.autograd.graph.saved_tensors_hooks`` on
this Granite (d_model 512, n_kv 2 x 64, d_ff 1408; 1 and 3 layers; seq 128 and 512): per token and
layer 8*d + 2*kv + 4*d_ff values (9,993 measured, 9,984 by the formula), and no seq^2 term (SDPA keeps
only its output); outside the layers 3*d + V (the logits), plus one more V for the loss's fp32
log-softmax and its gradient. Korthikanti et al. (2022) count 34*d bytes per token and layer at 16
bits for a GPT block with dropout, i.e. 17*d values; ours has no dropout and a SwiGLU MLP. With
``train.activation_checkpointing`` each block keeps its input (d) and one block is recomputed at a time.

The budget: on CPU, BUDGET_FRACTION of the machine's total RAM (``psutil.virtual_memory().total``;
the rest for the OS, the page cache and the launcher; not "available", which changes with whatever
else runs), shared by every process on the machine (``LOCAL_WORLD_SIZE`` in a worker; in the launcher,
all ``--num-processes``: preflight is not told ``--num-machines``). On CUDA, BUDGET_FRACTION of one
device's memory, one process per device: ``torch.cuda.get_device_properties`` reads its size without
allocating (``mem_get_info`` would create a CUDA context in the launcher for the whole run); the CUDA
path is not measured on a GPU yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from trainer.config.base import ConfigError
from trainer.state.size import param_counts  # the parameter count of the Granite models/builder.py builds

GIB = 2**30
RUNTIME = 0.75 * GIB
BUDGET_FRACTION = 0.9


@dataclass(frozen=True)
class Estimate:
    """Bytes one process needs, by kind."""

    weights: float
    gradients: float
    optimizer: float
    ema: float
    activations: float
    workspace: float
    runtime: float = RUNTIME

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.ema + self.activations + self.workspace + \
            self.runtime

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {getattr(self, k) / GIB:.1f}" for k in
                          ("weights", "gradients", "optimizer", "ema", "activations", "workspace", "runtime"))
        return f"{self.total / GIB:.1f} GiB per process ({parts})"


def acts_per_token(arch: dict, vocab: int, checkpointing: bool) -> tuple[int, int]:
    """(values per token in the layers, values per token outside them: fp32 logits); module docstring."""
    d, layers, ff = arch["d_model"], arch["n_layers"], arch["d_ff"]
    kv = d // arch["n_heads"] * arch["n_kv_heads"]
    block = 8 * d + 2 * kv + 4 * ff
    inside = layers * d + block if checkpointing else layers * block
    return inside, 3 * d + 2 * vocab


def estimate(arch: dict, vocab: int, *, world: int, zero_stage: int, bucket: float, adamw_only: bool,
             bf16: bool, ema: bool, on_cpu: bool, tokens: int, checkpointing: bool) -> Estimate:
    """One process's memory (bytes) for ``tokens`` tokens per micro-batch; see the module docstring."""
    matrices, others = param_counts(arch, vocab)
    p = matrices + others
    shards = world if zero_stage else 1
    width = 2 if bf16 and zero_stage else 4  # without DeepSpeed, bf16 is autocast over fp32 weights
    weights = width * p + (4 * p / shards if zero_stage else 0)
    if zero_stage == 2:  # its partition, in the weights' dtype and in fp32, and one reduce bucket
        grads = (width + 4) * p / shards + width * min(bucket, p)
    else:  # whole, plus ZeRO-1's fp32 partition for the optimizer
        grads = width * p + (4 * p / shards if zero_stage else 0)
    optimizer = (8 * p if adamw_only else 4 * matrices + 8 * others) / shards
    inside, outside = acts_per_token(arch, vocab, checkpointing)
    activations = tokens * (inside * (2 if bf16 else 4) + outside * 4)
    return Estimate(weights, grads, optimizer, 4 * p / shards if ema and on_cpu else 0, activations, workspace=4 * p)


def check_memory(cfg, arch: dict, world_size: int, tokenizer=None, machines: int = 1) -> None:
    """Preflight: refuse, in one line with the numbers and the fixes, a run that cannot fit. On CPU the
    processes of one machine (``world_size / machines``; a worker's ``LOCAL_WORLD_SIZE``) share its RAM."""
    import torch

    from trainer.config.curriculum import parse_curriculum
    from trainer.data.curriculum import micro_batch_size
    from trainer.run.dist import resolve_precision

    on_cpu = not torch.cuda.is_available()
    zero = _zero_settings(cfg.dist.deepspeed_config)
    vocab = len(tokenizer) if tokenizer is not None else 258 if cfg.data.tokenizer == "bytes" else cfg.data.vocab_size
    vocab = -(-vocab // cfg.model.pad_vocab_multiple) * cfg.model.pad_vocab_multiple  # models.padded_vocab
    seq = parse_curriculum(cfg.data.curriculum)[0].seq_len
    rows = micro_batch_size(cfg.train.tokens_per_step, world_size, cfg.train.grad_accum, seq)
    half = resolve_precision(cfg.train.precision) in ("bf16", "fp16")  # 16-bit weights, activations
    need = estimate(arch, vocab, world=world_size, zero_stage=zero[0], bucket=zero[1],
                    adamw_only=cfg.optim.name == "adamw", bf16=half,
                    ema=cfg.ema.enabled, on_cpu=on_cpu, tokens=rows * seq,
                    checkpointing=cfg.train.activation_checkpointing)
    if on_cpu:
        import psutil

        local = int(os.environ.get("LOCAL_WORLD_SIZE", -(-world_size // max(machines, 1))))
        have = psutil.virtual_memory().total
        where = "this machine's RAM" + (f", which its {local} processes share" if local > 1 else "")
    else:
        local, have = 1, torch.cuda.get_device_properties(0).total_memory
        where = f"one GPU's memory ({torch.cuda.get_device_name(0)})"
    if need.total * local > BUDGET_FRACTION * have:
        raise ConfigError(f"model: the run needs ~{need} x {local} = {need.total * local / GIB:.1f} GiB, more than "
                          f"{BUDGET_FRACTION * have / GIB:.1f} GiB ({BUDGET_FRACTION:.0%} of {have / GIB:.1f} GiB, "
                          f"{where}); {_fixes(cfg, need, zero[0], local)}")


def _zero_settings(path: str | None) -> tuple[int, float]:
    """(ZeRO stage, 0 for none; reduce bucket in elements) of a DeepSpeed JSON, checked at load."""
    if not path:
        return 0, 0.0
    with open(path, encoding="utf-8") as f:
        zero = json.load(f)["zero_optimization"]
    return zero["stage"], float(zero.get("reduce_bucket_size", 5e8))  # DeepSpeed's default bucket


def _fixes(cfg, need: Estimate, stage: int, local: int) -> str:
    fixes = ["fewer processes on this machine (--num-processes)"] if local > 1 else []
    fixes.append("a smaller model (model.preset)")
    if stage < 2:
        fixes.append("ZeRO-2 (--dist.deepspeed_config ds_configs/zero2.json)")
    if need.activations > need.total / 4:
        if not cfg.train.activation_checkpointing:
            fixes.append("--train.activation_checkpointing true")
        fixes.append("smaller micro-batches (a larger train.grad_accum)")
    return "use " + ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
