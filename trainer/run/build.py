"""Small ``build_*`` steps that turn a Config into the run's parts (no training here)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import partial

import torch
from accelerate.utils import DistributedType
from transformers import PretrainedConfig

from models import build_model, model_config, padded_vocab
from trainer.config import Config
from trainer.config.curriculum import parse_curriculum, parse_tokens
from trainer.data import Prefetcher, TrainLoader, build_tokenizer, build_val_batches, micro_batch_size
from trainer.data.sources import Source
from trainer.hf.init_from import InitModel, read_init
from trainer.launch.exit_codes import StorageError
from trainer.optim import build_optimizer
from trainer.optim.schedule import build_scheduler
from trainer.run.dist import build_accelerator, deepspeed_config, resolve_precision
from trainer.run.health import Health
from trainer.run.moe import ExpertLoad
from trainer.state import checkpoint as ckpt
from trainer.state import pinned, storage
from trainer.state.ema import ShardEMA
from trainer.state.fragments import held_fragments, is_sharded


def build_arch(cfg: Config) -> dict:
    return cfg.model.arch()


def build_model_config(cfg: Config, tokenizer, init: InitModel | None = None) -> PretrainedConfig:
    """A new run's architecture: ``init.from``'s model (its own vocabulary size), else ``model.type``'s
    class with the preset, the tokenizer's vocabulary (padded to ``model.pad_vocab_multiple``) and
    the muP multipliers. A resumed run's comes from its pin (``build_pinned``), whatever the recipe
    says now."""
    if init is not None:
        return init.config
    if cfg.model.config:
        return config_of_source(cfg, tokenizer)
    arch = build_arch(cfg)
    multipliers = {}
    if cfg.mup.enabled:
        from trainer.mup import mup_multipliers

        multipliers = mup_multipliers(arch, cfg.mup)
    vocab = padded_vocab(len(tokenizer), cfg.model.pad_vocab_multiple)
    return model_config(cfg.model.model_type, arch, vocab, sliding_window=cfg.model.sliding_window,
                        multipliers=multipliers, moe=cfg.model.moe(), aux_loss_coef=cfg.model.aux_loss_coef,
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def config_of_source(cfg: Config, tokenizer) -> PretrainedConfig:
    """``model.config``'s class and architecture with the run's vocabulary (the tokenizer's, padded),
    special-token ids and, under muP (a class that carries them: preflight checked), its multipliers."""
    from models import arch_of
    from trainer.hf.config_source import read_model_config

    config = read_model_config(cfg.model.config)
    config.vocab_size = padded_vocab(len(tokenizer), cfg.model.pad_vocab_multiple)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    if cfg.mup.enabled:
        from trainer.mup import mup_multipliers

        for name, value in mup_multipliers(arch_of(config), cfg.mup).items():
            setattr(config, name, value)
    return config


def build_pinned(cfg: Config, candidates: list[str], init: InitModel | None, rank: int) -> tuple:
    """The tokenizer and the architecture. Resuming (a pin in ``train.out_dir`` or a checkpoint to
    resume): the pinned ones, never re-derived from the current settings (preflight has refused a
    conflicting setting). Otherwise built from the config. Returns (tokenizer, model_config, data
    fingerprint, write): ``write`` pins them on rank 0 (``pin_run``; None: nothing to write)."""
    out_dir = cfg.train.out_dir
    auto = cfg.checkpoint.resume == "auto"
    pin = pinned.read_pin(out_dir if auto else None, candidates) if cfg.checkpoint.resume else None
    source = Source.from_config(cfg.data).fingerprint()
    if pin is not None:
        tokenizer, model_config, config = pin.tokenizer(), pin.model_config(), pin.config
    else:
        tokenizer = init.tokenizer() if init is not None else build_tokenizer(cfg.data)
        model_config, config = build_model_config(cfg, tokenizer, init), cfg.to_dict()
    write = None
    if rank == 0 and (pin is None or pin.path != pinned.pin_dir(out_dir)):
        write = partial(pinned.write_pin, out_dir, tokenizer=tokenizer, model_config=model_config, config=config,
                        source=source)
    elif rank == 0 and pin.source != source:  # preflight said so; said once
        write = partial(pinned.update_source, out_dir, source)
    return tokenizer, model_config, source, write


def pin_run(write, out_dir: str) -> None:
    """Every rank: rank 0 pins the run before the first step (``write`` from ``build_pinned``); a
    failed write is agreed by every rank and is one line, exit 74 (``trainer/state/storage.py``)."""
    failure = storage.agree(storage.attempt(write, pinned.pin_dir(out_dir)) if write else None)
    if failure is not None:
        raise StorageError(f"{failure['path']}: {storage.cause(failure)} while pinning the run's tokenizer and "
                           f"architecture in {out_dir}; free space or choose another train.out_dir, then run the "
                           "same command")


def build_initialized_model(cfg: Config, model_config: PretrainedConfig, init: InitModel | None = None):
    """A fresh model (muP init under mup.enabled), or ``init.from``'s weights when ``init`` is given."""
    model = init.load_model() if init is not None else build_model(model_config, seed=cfg.train.seed)
    if cfg.train.activation_checkpointing:  # non-reentrant: works with torch.compile and unused inputs
        enable = (model.activation_checkpointing_enable if hasattr(model, "activation_checkpointing_enable")
                  else model.gradient_checkpointing_enable)  # transformers 4.x's name
        enable({"use_reentrant": False})
    if cfg.mup.enabled and init is None:
        from trainer.mup import apply_mup_init

        apply_mup_init(model, cfg.mup, seed=cfg.train.seed)
    return model


def total_steps(cfg: Config) -> int:
    """Run length in optimizer steps: train.steps, or train.tokens / train.tokens_per_step."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    return math.ceil(parse_tokens(cfg.train.tokens) / cfg.train.tokens_per_step)


def final_seq_len(cfg: Config) -> int:
    """The curriculum's last (target) sequence length."""
    return parse_curriculum(cfg.data.curriculum)[-1].seq_len


@dataclass(kw_only=True)
class Run:
    """The parts of one run, built once by ``build_run``.

    ``optimizer`` is what ``accelerator.prepare`` returned; ``client_optimizer`` the torch optimizer
    inside it (ShardedMuon or AdamW; under ZeRO its groups hold this rank's flat partitions);
    ``recipe_groups`` each group's settings from the recipe (re-applied over a checkpoint's)."""

    cfg: Config
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    client_optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    tokenizer: object
    model_config: object
    val_batches: list
    total_steps: int
    resume_candidates: list[str]
    recipe_groups: list[dict]
    ema: ShardEMA | None = None
    health: Health | None = None
    experts: ExpertLoad | None = None  # a MoE model's load counts and bias update (trainer/run/moe.py)
    scaler: torch.amp.GradScaler | None = None  # fp16 without DeepSpeed: the trainer's dynamic loss scaler
    meta: dict = field(default_factory=dict)
    fragments: list = field(default_factory=list)  # per held tensor of client_optimizer: (name, start, numel, at)
    shapes: dict = field(default_factory=dict)  # parameter name -> shape
    sharded: bool = False  # client_optimizer holds ZeRO partitions (not whole parameters)


def build_run(cfg: Config) -> Run:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    precision = resolve_precision(cfg.train.precision)
    steps = total_steps(cfg)
    candidates = ckpt.resume_candidates(cfg.checkpoint.resume, cfg.train.out_dir)
    init = read_init(cfg) if cfg.init.from_ else None
    tokenizer, model_config, source, write_pin = build_pinned(cfg, candidates, init, rank)
    loader = TrainLoader(cfg.data, tokenizer, rank=rank, world_size=world,
                         tokens_per_step=cfg.train.tokens_per_step, grad_accum=cfg.train.grad_accum,
                         max_seq_len=model_config.max_position_embeddings)
    if cfg.data.prefetch:
        loader = Prefetcher(loader, pin=torch.cuda.is_available())
    accelerator = build_accelerator(
        build_deepspeed_config(cfg, loader.micro_batch_size, world, precision), grad_accum=cfg.train.grad_accum,
        precision=precision, log_with=cfg.log.trackers, project_dir=cfg.train.out_dir)
    assert accelerator.num_processes == world and accelerator.process_index == rank
    pin_run(write_pin, cfg.train.out_dir)

    if init is not None:
        accelerator.print(init.describe(cfg) + ("; resuming: the weights come from the checkpoint" if candidates
                                                else ", step 0"))
    model = build_initialized_model(cfg, model_config, init if not candidates else None)
    named = dict(model.named_parameters())
    client = build_optimizer(model, cfg)
    recipe_groups = [{k: v for k, v in g.items() if k != "params"} for g in client.param_groups]
    orig_groups = [list(g["params"]) for g in client.param_groups]
    scheduler = build_scheduler(client, cfg.train, steps)  # stepped by us, not through prepare
    prepared, optimizer = accelerator.prepare(model, client)
    if resolve_compile(cfg.train.compile):
        compile_model(accelerator, prepared)
    fragments = held_fragments(client, orig_groups, {id(p): n for n, p in named.items()})
    sharded = is_sharded(client, orig_groups)
    ema = ShardEMA.from_optimizer(client, orig_groups, named, cfg.ema) if cfg.ema.enabled else None
    val_len = final_seq_len(cfg)
    val_batches = build_val_batches(cfg.data, tokenizer, seq_len=val_len,
                                    micro_batch_size=micro_batch_size(cfg.train.tokens_per_step, world,
                                                                      cfg.train.grad_accum, val_len),
                                    n_batches=cfg.train.eval_batches, rank=rank, world_size=world)
    meta = {"config": cfg.to_dict(), "model_config": model_config.to_dict(), "versions": ckpt.versions(),
            "world_size": world, "init_from": init.spec if init is not None else None, "source": source}
    health = Health(cfg.train.max_skipped, cfg.train.spike_factor, cfg.train.spike_steps)
    experts = ExpertLoad(model, cfg.model.bias_update_speed)
    scaler = torch.amp.GradScaler(accelerator.device.type) if precision == "fp16" and not cfg.dist.deepspeed_config \
        else None
    return Run(cfg=cfg, accelerator=accelerator, model=prepared, optimizer=optimizer, client_optimizer=client,
               scheduler=scheduler, loader=loader, tokenizer=tokenizer, model_config=model_config,
               val_batches=val_batches, total_steps=steps, resume_candidates=candidates, recipe_groups=recipe_groups,
               ema=ema, health=health, experts=experts if experts.blocks else None, scaler=scaler, meta=meta,
               fragments=fragments,
               shapes={n: tuple(p.shape) for n, p in named.items()}, sharded=sharded)


def resolve_compile(setting: bool | str) -> bool:
    """``train.compile``: auto compiles with CUDA only (on CPU inductor needs a C++ compiler and the
    first step pays minutes of compilation for little gain)."""
    return torch.cuda.is_available() if setting == "auto" else bool(setting)


def compile_model(accelerator, prepared) -> None:
    """Compile the prepared model in place (inductor, static shapes: each curriculum phase and the
    evaluation shape compile once). Under DeepSpeed the engine's own ``compile()`` (it compiles its
    module in place); otherwise ``nn.Module.compile`` on the module inside any DDP wrapper. In place,
    parameter names and state dicts keep their keys, so checkpoints, the EMA and the export are the same
    compiled or not."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        prepared.compile(backend="inductor", compile_kwargs={"dynamic": False})
    else:
        accelerator.unwrap_model(prepared).compile(backend="inductor", dynamic=False)


def build_deepspeed_config(cfg: Config, micro_batch: int, world: int, precision: str) -> dict | None:
    if not cfg.dist.deepspeed_config:
        return None
    return deepspeed_config(cfg.dist.deepspeed_config, micro_batch_size=micro_batch, grad_accum=cfg.train.grad_accum,
                            world_size=world, grad_clip=cfg.train.grad_clip, precision=precision)
