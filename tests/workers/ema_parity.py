"""Launched by tests/test_ema.py: the CPU EMA under DeepSpeed ZeRO-1/2 (or DDP) on W CPU ranks.

    accelerate launch --config_file accelerate_configs/cpu_2proc_zero2.yaml --num_processes W \
        tests/workers/ema_parity.py OUT_DIR MODE ...        # MODE: zero1, zero2 or ddp

For each MODE it trains the 3-layer tiny model of ``muon_parity`` (a Muon matrix straddles a
partition boundary) with ``ShardEMA`` updated after every optimizer step, and rank 0 records
the full weights after every step: the test recomputes the EMA from that trajectory in one
process. Rank 0 writes ``OUT_DIR/ema_{MODE}_w{W}.pt`` with the assembled EMA, every rank's EMA
bytes, whether the raw weights came back bit-identical after an EMA evaluation, and whether an
EMA restored from a state dict into a fresh run is exactly equal.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.workers.muon_parity import MICRO_BATCH, global_batch, run_config, tiny_model  # noqa: E402
from trainer.launch.process_group import run_main  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.state.ema import EmaConfig, ShardEMA  # noqa: E402

STEPS = 7
EMA = EmaConfig(enabled=True, decay=0.8, every=2, warmup=True, start_step=1)


def _accelerator(mode: str, world: int):
    from accelerate.state import AcceleratorState, GradientState

    from trainer.run.dist import build_accelerator, deepspeed_config
    AcceleratorState._reset_state()
    GradientState._reset_state()
    ds = None
    if mode.startswith("zero"):
        ds = deepspeed_config(f"ds_configs/{mode}.json", micro_batch_size=MICRO_BATCH, grad_accum=1,
                              world_size=world, grad_clip=0.0, precision="fp32")
    return build_accelerator(ds, grad_accum=1)


def build(mode: str, world: int):
    accelerator = _accelerator(mode, world)
    model = tiny_model()
    named = dict(model.named_parameters())
    client = build_optimizer(model, run_config())
    orig = [list(g["params"]) for g in client.param_groups]
    prepared, optimizer = accelerator.prepare(model, client)
    ema = ShardEMA.from_optimizer(client, orig, named, EMA)
    return accelerator, model, prepared, optimizer, ema


def run(out_dir: str, mode: str) -> None:
    world = int(os.environ["WORLD_SIZE"])
    accelerator, model, prepared, optimizer, ema = build(mode, world)
    rank = accelerator.process_index
    trajectory = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    ema.update(0)
    for step in range(STEPS):
        chunk = global_batch(step, world, 1)[rank]
        with accelerator.accumulate(prepared):
            accelerator.backward(prepared(input_ids=chunk, labels=chunk).loss)
            optimizer.step()
            optimizer.zero_grad()
        ema.update(step + 1)
        trajectory.append({n: p.detach().clone() for n, p in model.named_parameters()})

    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.swapped_into(model):
        full = ema.assemble()
        swapped_in = all(torch.equal(p, full[n]) for n, p in model.named_parameters())
    raw_restored = all(torch.equal(raw[n], p) for n, p in model.named_parameters())
    full = ema.assemble()
    saved = ema.state_dict()
    nbytes = [None] * world
    dist.all_gather_object(nbytes, ema.nbytes())
    ema.close()

    # A fresh run (same layout) restores the EMA exactly from the saved shard.
    _, _, _, _, fresh = build(mode, world)
    fresh.load_state_dict(saved)
    restored_exact = all(torch.equal(a, b) for a, b in zip(fresh.assemble().values(), full.values()))
    fresh.close()
    if rank == 0:
        torch.save(dict(world=world, mode=mode, steps=STEPS, trajectory=trajectory, ema=full, ema_bytes=nbytes,
                        sharded=ema.sharded, swapped_in=swapped_in, raw_restored=raw_restored,
                        restored_exact=restored_exact, model_numel=sum(t.numel() for t in raw.values())),
                   os.path.join(out_dir, f"ema_{mode}_w{world}.pt"))


def main() -> None:
    torch.manual_seed(0)
    for mode in sys.argv[2:]:
        run(sys.argv[1], mode)


if __name__ == "__main__":
    sys.exit(run_main(main))  # the process group is destroyed on every exit path
