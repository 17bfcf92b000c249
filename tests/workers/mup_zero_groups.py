"""Launched on 2 CPU ranks under DeepSpeed ZeRO-2: do the muP param groups keep their own lr?

For each optimizer named in argv[2:] (a fresh Accelerator each): a muP model (width 128, base 32), ``build_optimizer``,
``accelerator.prepare``, then record every group's lr inside the ZeRO optimizer after prepare,
with a warmup LambdaLR (``trainer.optim.schedule.build_scheduler``, built on the client optimizer
before prepare, as the loop does) and after two training steps.
Usage: ``accelerate launch ... mup_zero_groups.py OUT.json muon adamw`` (rank 0 writes OUT: one record
per optimizer).
"""

import json
import sys

import torch

from models import build_model, granite_config, resolve_preset
from trainer.config import Config
from trainer.config.mup import MupConfig
from trainer.config.optim import OptimConfig
from trainer.launch.process_group import run_main
from trainer.mup import apply_mup_init, mup_multipliers
from trainer.optim import build_optimizer
from trainer.optim.schedule import build_scheduler
from trainer.run.dist import build_accelerator, deepspeed_config


def lrs(optimizer) -> dict:
    return {g["name"]: g["lr"] for g in optimizer.optimizer.param_groups}


def run(optim: str, accelerator) -> dict:
    mup = MupConfig(enabled=True, base_width=32)
    cfg = Config(optim=OptimConfig(name=optim, lr=0.02, adamw_lr=0.004, scale="match_rms_adamw"), mup=mup)
    cfg.train.warmup_steps, cfg.train.schedule = 4, "constant"
    arch = resolve_preset("tiny", d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256, tie_embeddings=False)
    model = build_model(granite_config(arch, 64, multipliers=mup_multipliers(arch, mup)), 0)
    apply_mup_init(model, mup)
    optimizer = build_optimizer(model, cfg)
    built = {g["name"]: g["lr"] for g in optimizer.param_groups}
    scheduler = build_scheduler(optimizer, cfg.train, total_steps=10)  # as the loop does: before prepare
    model, optimizer = accelerator.prepare(model, optimizer)
    rec = dict(built=built, prepared=lrs(optimizer),
               zero_type=type(optimizer.optimizer).__name__, flat=[[list(p.shape) for p in g["params"]]
                                                                  for g in optimizer.optimizer.param_groups])
    rec["warmup0"] = lrs(optimizer)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(accelerator.process_index))
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    rec["after_2_steps"] = lrs(optimizer)
    return rec


def main() -> None:
    from accelerate.state import AcceleratorState, GradientState

    path, result = sys.argv[1], {}
    for optim in sys.argv[2:]:  # one DeepSpeed engine per Accelerator: a fresh one per optimizer
        AcceleratorState._reset_state()
        GradientState._reset_state()
        ds = deepspeed_config("ds_configs/zero2.json", micro_batch_size=2, grad_accum=1, world_size=2,
                              grad_clip=1.0, precision="fp32")
        accelerator = build_accelerator(ds, grad_accum=1)
        result[optim] = dict(world=accelerator.num_processes, **run(optim, accelerator))
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(path, "w") as f:
            json.dump(result, f)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))  # the process group is destroyed on every exit path
