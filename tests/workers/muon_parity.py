"""Launched by tests/test_muon_zero.py: ShardedMuon under DeepSpeed ZeRO-1/2 on W CPU ranks (gloo).

    accelerate launch --config_file accelerate_configs/cpu_2proc_zero2.yaml \
        tests/workers/muon_parity.py OUT_DIR STAGE:ACCUM[:clip|:nan|:moe|:ns=METHOD] ... [exchange]

For each STAGE:ACCUM it trains the tiny model STEPS optimizer steps through the real
``accelerator.prepare`` / ``accumulate`` / ``backward`` path on this rank's share of the global batch
and rank 0 writes ``OUT_DIR/zero{stage}_accum{accum}.pt``: final parameters, whether all ranks hold
identical parameters, the straddler layout and every rank's optimizer-state bytes. Flags: ``:clip`` clips the
global gradient norm to CLIP (DeepSpeed clips before our step, hence before Newton-Schulz);
``:nan`` makes one hidden gradient NaN on the last rank at step NAN_STEP, a step that must be
skipped everywhere with the optimizer state untouched; ``:moe`` trains the deepseek_v3 model of
``tiny_model(moe=True)`` (MLA and expert stacks) instead of Granite; ``:ns=METHOD`` orthogonalizes with
``optim.ns_method`` METHOD. ``reference_params`` is the
single-process run on the full global batch, imported by the test.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from models import build_model, granite_config, resolve_preset  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.launch.process_group import run_main  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.state.fragments import param_fragment  # noqa: E402

STEPS, MICRO_BATCH, SEQ, VOCAB = 5, 2, 16, 128
CLIP, NAN_STEP = 0.1, 2


def tiny_model(moe: bool = False):
    """3 layers, so the Muon group's midpoint (and quarter points) fall inside a matrix. ``moe``: the
    same sizes as deepseek_v3, multi-head latent attention and, after its first (dense) layer, 4 routed
    experts (top-2) of width 40 plus 2 shared ones (an MLP of width 80): expert stacks (4, 80, 64) and
    (4, 64, 40), whose expert matrices (40, 64) and (64, 40) no other matrix shares, and which the
    partition boundaries cut inside an expert slice."""
    arch = resolve_preset("tiny", d_model=64, n_layers=3, n_heads=2, n_kv_heads=2, d_ff=96)
    if moe:
        from models import model_config, resolve_moe

        experts = resolve_moe("deepseek_v3", arch, experts=4, experts_per_token=2, expert_d_ff=40, shared_experts=2)
        return build_model(model_config("deepseek_v3", arch, VOCAB, moe=experts), seed=0)
    return build_model(granite_config(arch, vocab_size=VOCAB), seed=0)


def run_config(ns_method: str = "quintic") -> Config:
    cfg = Config()
    cfg.optim.lr, cfg.optim.adamw_lr, cfg.optim.weight_decay, cfg.optim.adamw_weight_decay = 0.02, 3e-3, 0.1, 0.1
    cfg.optim.ns_dtype, cfg.optim.ns_method = "fp32", ns_method
    return cfg


def result_file(spec: str, world: int) -> str:
    """Where rank 0 writes a spec's result: the spec with ':' as '_'."""
    return f"{spec.replace(':', '_')}_w{world}.pt"


def global_batch(step: int, world: int, accum: int) -> torch.Tensor:
    """(world * accum, MICRO_BATCH, SEQ): chunk r * accum + k is rank r's micro-batch k."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, VOCAB, (world * accum, MICRO_BATCH, SEQ), generator=g)


def reference_params(world: int, accum: int, steps: int = STEPS, clip: float = 0.0,
                     skip_step: int | None = None, moe: bool = False,
                     ns_method: str = "quintic") -> dict[str, torch.Tensor]:
    """Single process, whole-param mode, same global batch: the gradient is the mean over all
    world * accum chunks of each chunk's mean loss, as DeepSpeed's DP average of accumulated grads."""
    model = tiny_model(moe)
    opt = build_optimizer(model, run_config(ns_method))
    for step in range(steps):
        for chunk in global_batch(step, world, accum):
            (model(input_ids=chunk, labels=chunk).loss / (world * accum)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if step != skip_step:
            opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _fresh_accelerator(stage: int, accum: int, world: int, clip: float = 0.0):
    from accelerate.state import AcceleratorState, GradientState

    from trainer.run.dist import build_accelerator, deepspeed_config
    AcceleratorState._reset_state()  # several DeepSpeed runs in one process; keeps the process group
    GradientState._reset_state()
    ds = deepspeed_config(f"ds_configs/zero{stage}.json", micro_batch_size=MICRO_BATCH, grad_accum=accum,
                          world_size=world, grad_clip=clip, precision="fp32")
    return build_accelerator(ds, grad_accum=accum)


def _train(accelerator, model, optimizer, steps: range, accum: int, nan_param=None):
    rank, world = accelerator.process_index, accelerator.num_processes
    for step in steps:
        chunks = global_batch(step, world, accum)[rank * accum:(rank + 1) * accum]
        poison = nan_param is not None and step == NAN_STEP and rank == world - 1
        handle = nan_param.register_hook(lambda g: torch.full_like(g, float("nan"))) if poison else None
        for chunk in chunks:
            with accelerator.accumulate(model):
                accelerator.backward(model(input_ids=chunk, labels=chunk).loss)
                optimizer.step()
                optimizer.zero_grad()
        if handle is not None:
            handle.remove()


def _state_bytes(opt) -> dict[str, int]:
    out = {"muon": 0, "adamw": 0}
    for group in opt.param_groups:
        for p in group["params"]:
            out[group["kind"]] += sum(v.numel() * v.element_size() for v in opt.state[p].values()
                                      if torch.is_tensor(v))
    return out


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run(out_dir: str, stage: int, accum: int, flags: list[str]) -> None:
    import torch.distributed as dist
    clip = CLIP if "clip" in flags else 0.0
    accelerator = _fresh_accelerator(stage, accum, int(os.environ["WORLD_SIZE"]), clip)
    world = accelerator.num_processes
    assert world == dist.get_world_size(), "accelerate must see the real ranks (gloo on CPU)"
    moe = "moe" in flags
    ns_method = next((f.split("=", 1)[1] for f in flags if f.startswith("ns=")), "quintic")
    model = tiny_model(moe)
    muon = build_optimizer(model, run_config(ns_method))
    prepared, optimizer = accelerator.prepare(model, muon)
    nan_param = model.model.layers[0].mlp.up_proj.weight if "nan" in flags else None
    _train(accelerator, prepared, optimizer, range(STEPS), accum, nan_param)

    flat = _flat_params(model)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    state = [None] * world
    dist.all_gather_object(state, _state_bytes(muon))
    layout = muon._layouts["muon_hidden"]
    names = {id(p): n for n, p in model.named_parameters()}
    registered = muon._registered["muon_hidden"]
    local = [(i, *f) for i, p in enumerate(registered) if (f := param_fragment(p)) is not None]
    fragments = [None] * world
    dist.all_gather_object(fragments, local)
    cut = [names[id(p)] for p in muon._registered["muon_hidden"]
           if (f := param_fragment(p)) is not None and f[1] < p.numel()]
    everyone = [None] * world
    dist.all_gather_object(everyone, cut)
    result = dict(
        fragments=fragments, numels=[p.numel() for p in registered],
        moe=moe, ns_method=ns_method, cut_params=sorted(set(sum(everyone, []))),
        numel={n: p.numel() for n, p in model.named_parameters()},
        world=world, stage=stage, accum=accum, steps=STEPS, clip=clip,
        skip_step=NAN_STEP if "nan" in flags else None,
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        ranks_identical=all(torch.equal(g, gathered[0]) for g in gathered),
        straddler_numel=sum(st.shape[0] * st.shape[1] for st in layout.straddlers),
        straddlers=sorted({st.shape for st in layout.straddlers}),
        owners=[st.owner for st in layout.straddlers], holders=[st.holders for st in layout.straddlers],
        state_bytes=state,
        unsharded_bytes={"muon": 4 * sum(p.numel() for g in muon.param_groups if g["kind"] == "muon"
                                         for p in muon._registered[g["name"]]),
                         "adamw": 8 * sum(p.numel() for g in muon.param_groups if g["kind"] == "adamw"
                                          for p in muon._registered[g["name"]])},
    )

    if accelerator.is_main_process:
        torch.save(result, os.path.join(out_dir, result_file(":".join([str(stage), str(accum), *flags]), world)))


# The owner exchange on hand-made partitions (4 ranks): matrices A (8x16), B (16x16), C (8x8), D (8x8)
# flattened one after another (512 elements), cut at these boundaries.
EXCHANGE_SHAPES = [(8, 16), (16, 16), (8, 8), (8, 8)]
EXCHANGE_CUTS = {"two-straddlers-rank3-none": [0, 90, 200, 384, 512],  # A: r0+r1, B: r1+r2, C, D: r3 alone
                 "one-matrix-on-four-ranks": [0, 150, 200, 300, 512]}  # B: r0, r1, r2, r3


def exchange(out_dir: str) -> None:
    """For each cut: this rank's slice of a random flat direction goes through ``to_owners``, the owners'
    orthogonalization and ``from_owners``; rank 0 writes every rank's update slice, its layout and the
    single-process result (every matrix orthogonalized whole) to OUT_DIR/exchange_w4.pt."""
    import math

    import torch.distributed as dist

    from trainer.optim.exchange import from_owners, to_owners
    from trainer.optim.layout import layout_from_fragments
    from trainer.optim.orthogonalize import orthogonalize

    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 4, "the exchange cases are cut for 4 ranks"
    sizes = [math.prod(s) for s in EXCHANGE_SHAPES]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    flat = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(7))
    report = {}
    for name, cuts in EXCHANGE_CUTS.items():
        everyone = [[(i, max(lo, s) - s, min(hi, s + n) - max(lo, s), max(lo, s) - lo)
                     for i, (s, n) in enumerate(zip(starts, sizes)) if max(lo, s) < min(hi, s + n)]
                    for lo, hi in zip(cuts, cuts[1:])]
        layout = layout_from_fragments(everyone, rank, [(1, s) for s in EXCHANGE_SHAPES], sizes)
        layout.group = dist.group.WORLD
        mine = flat[cuts[rank]:cuts[rank + 1]].clone()
        owned = to_owners(layout, {0: mine})
        whole = [j for j, pc in enumerate(layout.pieces) if pc.straddler is None]
        mats = [mine[layout.pieces[j].offset:][:layout.pieces[j].numel].view(layout.pieces[j].shape) for j in whole]
        mats += [owned[n].view(layout.straddlers[n].shape) for n in sorted(owned)]
        ortho = [orthogonalize(M, "quintic", 5, torch.float32) for M in mats]
        slices = from_owners(layout, {n: O.reshape(-1) for n, O in zip(sorted(owned), ortho[len(whole):])}, mine)
        update = torch.empty_like(mine)
        for j, pc in enumerate(layout.pieces):
            part = slices[j] if pc.straddler is not None else ortho[whole.index(j)].reshape(-1)
            update[pc.offset:][:pc.numel] = part
        gathered = [None] * world
        dist.all_gather_object(gathered, {"update": update, "pieces": len(layout.pieces),
                                          "straddler_pieces": sum(pc.straddler is not None for pc in layout.pieces),
                                          "owned": sorted(owned)})
        reference = torch.cat([orthogonalize(flat[s:s + n].view(shape), "quintic", 5, torch.float32).reshape(-1)
                               for s, n, shape in zip(starts, sizes, EXCHANGE_SHAPES)])
        report[name] = {"ranks": gathered, "reference": reference, "cuts": cuts,
                        "straddlers": [(st.shape, st.owner, st.holders) for st in layout.straddlers]}
    if rank == 0:
        torch.save(report, os.path.join(out_dir, "exchange_w4.pt"))


def main() -> None:
    torch.manual_seed(0)
    out_dir, specs = sys.argv[1], sys.argv[2:]
    for spec in specs:
        if spec == "exchange":
            exchange(out_dir)
            continue
        stage, accum, *flags = spec.split(":")
        run(out_dir, int(stage), int(accum), flags)


if __name__ == "__main__":
    sys.exit(run_main(main))  # the process group is destroyed on every exit path
