"""Optimizer benchmark (issue 3): iteration time and optimizer-state bytes per rank, 2 CPU ranks.

    .venv/bin/python scripts/bench/optimizer.py [--iters 6] [--warmup 2] [--write BENCHMARKS.md]

Run with plain python it starts itself under ``accelerate launch --config_file
accelerate_configs/cpu_2proc_zero2.yaml`` (OMP_NUM_THREADS=1); launched by you, it runs as is.

One launch, one model (Granite 768 wide, 2 layers, d_ff 2048, vocab 4096), one batch per rank
(2 x 128 tokens), fp32 weights, run in turn under:

  ddp_replicated torch.optim.Muon (hidden) + torch.optim.AdamW (rest), plain DDP, every rank holds
                 all state (runs first: see VARIANTS)
  adamw_zero2    torch.optim.AdamW over our muP groups, ZeRO-2 (the baseline)
  ours_zero2     ShardedMuon (Muon hidden + AdamW rest), ZeRO-2, quintic Newton-Schulz
  ours_zero1     the same under ZeRO-1
  ours_zero2_M   ours_zero2 with optim.ns_method M (polar_express, gram, gram_polar_express)
  native_zero2   DeepSpeed's own Muon ("optimizer": {"type": "Muon"}), ZeRO-2; it orthogonalizes
                 inside backward's gradient partitioning, so whole iterations are timed

Iteration = forward + backward + optimizer step (median of --iters after --warmup). Muon overhead
= iteration time - adamw_zero2's. Ours runs Newton-Schulz in ``optim.ns_dtype`` auto: fp32 on CPU
(bf16 on GPU), as DeepSpeed 0.19.8's native Muon does on a CPU (its Gram iteration takes fp16 only on
accelerators), so the comparison is like for like. (On this session's CPU a one-thread bf16 GEMM runs
at ~55-75 GFLOP/s against ~135-150 for fp32: bf16 would be the slower choice here.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from models import build_model, granite_config, resolve_preset  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.launch.process_group import run_main  # noqa: E402
from trainer.optim import ShardedMuon, build_optimizer, build_param_groups  # noqa: E402
from trainer.run.dist import build_accelerator, deepspeed_config  # noqa: E402

ARCH = dict(d_model=768, n_layers=2, n_heads=12, n_kv_heads=12, d_ff=2048, max_seq_len=256)
VOCAB, MICRO_BATCH, SEQ = 4096, 2, 128
# DDP first: accelerate cannot build a plain Accelerator after a DeepSpeed one in the same process
METHODS = ("polar_express", "gram", "gram_polar_express")  # optim.ns_method beside the default quintic
VARIANTS = ["ddp_replicated", "adamw_zero2", "ours_zero2", "ours_zero1", *(f"ours_zero2_{m}" for m in METHODS),
            "native_zero2"]
SECTION = "## Optimizer (issue 3)"
NS_GFLOPS = 140.0  # one-thread fp32 GEMM on this session's CPU (768 x 768 x 2048: 135-150 GFLOP/s)


def _model():
    return build_model(granite_config(resolve_preset("tiny", **ARCH), vocab_size=VOCAB), seed=0)


def _cfg(name: str, ns_method: str = "quintic") -> Config:
    cfg = Config()
    cfg.optim.name, cfg.optim.ns_dtype, cfg.optim.scale, cfg.optim.ns_method = name, "auto", "original", ns_method
    return cfg


def _accelerator(stage: int | None, native: bool = False):
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state()
    GradientState._reset_state()
    if stage is None:  # the launcher asked for DeepSpeed; this variant is plain DDP
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "false"
        try:
            return build_accelerator(None, grad_accum=1)
        finally:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    ds = deepspeed_config(f"ds_configs/zero{stage}.json", micro_batch_size=MICRO_BATCH, grad_accum=1,
                          world_size=int(os.environ["WORLD_SIZE"]), grad_clip=1.0, precision="fp32")
    if native:  # DeepSpeed builds and tags the optimizer itself (use_muon on >= 2-D non-embedding params)
        o = Config().optim
        ds["optimizer"] = {"type": "Muon", "params": {"lr": o.lr, "momentum": o.momentum, "weight_decay": 0.0,
                                                      "adam_lr": o.adamw_lr, "betas": o.adamw_betas,
                                                      "eps": o.adamw_eps}}
    return build_accelerator(ds, grad_accum=1)


def _state_bytes(*optimizers) -> int:
    return sum(v.numel() * v.element_size() for opt in optimizers for s in opt.state.values()
               for v in s.values() if torch.is_tensor(v))


def _setup(variant: str):
    """-> (accelerator, model, step_fn, optimizers whose state is counted, client ShardedMuon or None)."""
    model = _model()
    if variant == "ddp_replicated":
        acc = _accelerator(None)
        groups = build_param_groups(model, _cfg("muon"))
        muon = torch.optim.Muon(groups[0]["params"], lr=groups[0]["lr"], weight_decay=0.0)
        adamw = torch.optim.AdamW(groups[1:], foreach=False)
        model, muon, adamw = acc.prepare(model, muon, adamw)
        return acc, model, [muon, adamw], [muon.optimizer, adamw.optimizer], None
    if variant == "native_zero2":
        from accelerate.utils import DummyOptim
        acc = _accelerator(2, native=True)
        model, opt = acc.prepare(model, DummyOptim(model.parameters()))
        return acc, model, [opt], [opt.optimizer.optimizer], None
    stage = 1 if variant.endswith("zero1") else 2
    acc = _accelerator(stage)
    method = next((m for m in METHODS if variant.endswith(m)), "quintic")
    client = build_optimizer(model, _cfg("adamw" if variant.startswith("adamw") else "muon", method))
    model, opt = acc.prepare(model, client)
    return acc, model, [opt], [client], client if isinstance(client, ShardedMuon) else None


def _timed_step(client: ShardedMuon, box: list) -> None:
    """Bench-only: time the client optimizer's step() (DeepSpeed calls it once per group)."""
    inner = client.step

    def step(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        box[-1] += time.perf_counter() - t
        return out
    client.step = step


def _ns_gflop_per_rank(client: ShardedMuon) -> float:
    """Orthogonalization work this rank does: the matrices it holds whole and the straddlers it owns."""
    from trainer.optim.orthogonalize import orthogonalize_flops

    method = next(g.get("ns_method", "quintic") for g in client.param_groups if g["kind"] == "muon")
    whole = [pc.shape for lay in client._layouts.values() for pc in lay.pieces if pc.straddler is None]
    owned = [st.shape for lay in client._layouts.values() for st in lay.straddlers if st.owner == lay.rank]
    return sum(orthogonalize_flops(shape, method) for shape in whole + owned) / 1e9


def bench(variant: str, iters: int, warmup: int) -> dict:
    acc, model, optimizers, stateful, client = _setup(variant)
    g = torch.Generator().manual_seed(acc.process_index)
    batch = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ), generator=g)
    times, opt_times = [], []
    if client is not None:
        _timed_step(client, opt_times)
    for _ in range(warmup + iters):
        opt_times.append(0.0)
        dist.barrier()
        t = time.perf_counter()
        with acc.accumulate(model):
            acc.backward(model(input_ids=batch, labels=batch).loss)
            for opt in optimizers:
                opt.step()
                opt.zero_grad()
        times.append(time.perf_counter() - t)
    per_rank = [None] * acc.num_processes
    dist.all_gather_object(per_rank, _state_bytes(*stateful))
    ns_gflop = [None] * acc.num_processes
    dist.all_gather_object(ns_gflop, _ns_gflop_per_rank(client) if client else 0.0)
    n_muon = sum(p.numel() for p in build_param_groups(_model(), _cfg("muon"))[0]["params"])
    n_all = sum(p.numel() for p in _model().parameters())
    result = dict(variant=variant, iter_s=statistics.median(times[warmup:]), state_bytes=per_rank,
                  opt_step_s=statistics.median(opt_times[warmup:]) if client else None,
                  ns_gflop_max_rank=max(ns_gflop), unsharded_state_bytes=4 * n_muon + 8 * (n_all - n_muon))
    del model, optimizers, stateful
    return result


def table(results: dict[str, dict], world: int) -> str:
    base = results["adamw_zero2"]["iter_s"] if "adamw_zero2" in results else None
    total = next(iter(results.values()))["unsharded_state_bytes"]  # the same model in every variant
    native = results.get("native_zero2")
    lines = ["| variant | iter s (median [min-max] of runs) | Muon overhead s | / native's overhead | "
             "state MB / rank (max) | / (Muon+AdamW total / W) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        over = "-" if name == "adamw_zero2" or base is None else f"{r['iter_s'] - base:.3f}"
        vs = "-" if name == "adamw_zero2" or base is None or native is None else \
            f"{(r['iter_s'] - base) / (native['iter_s'] - base):.2f}"
        ratio = "- (Adam moments everywhere)" if name == "adamw_zero2" else f"{max(r['state_bytes']) / (total / world):.3f}"
        mb = max(r["state_bytes"]) / 2 ** 20
        spread = f" [{r.get('iter_min', r['iter_s']):.3f}-{r.get('iter_max', r['iter_s']):.3f}]"
        lines.append(f"| {name} | {r['iter_s']:.3f}{spread} | {over} | {vs} | {mb:.2f} | {ratio} |")
    return "\n".join(lines)


def write_section(path: str, body: str) -> None:
    """Replace (or append) our section of BENCHMARKS.md, leaving every other section as it is."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1:] if nxt >= 0 else "")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


def relaunch(argv: list[str]) -> int:
    """Not started by a launcher: run this script under ``accelerate launch`` on 2 CPU ranks."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(root, "accelerate_configs", "cpu_2proc_zero2.yaml"), os.path.abspath(__file__), *argv]
    print("optimizer bench: starting 2 ranks with accelerate launch (gloo, ZeRO-2 config)", flush=True)
    return subprocess.run(cmd, cwd=root, env=env).returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--d-model", type=int, default=ARCH["d_model"],
                    help="model width, a multiple of 64 (heads of 64; d_ff = 8/3 width); the figures use 768")
    ap.add_argument("--d-ff", type=int, default=None, help="MLP width (default 8/3 x width; the 1b shapes: 5632)")
    ap.add_argument("--repeat", type=int, default=1, help="run every variant this many times; the table gives "
                    "the median over runs of each run's median iteration, with the min-max spread")
    ap.add_argument("--write", default=None, help="BENCHMARKS.md to update (rank 0)")
    ap.add_argument("--json", default=None, help="also dump raw results here")
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {','.join(VARIANTS)}")
    if args.d_model < 64 or args.d_model % 64:
        ap.error(f"--d-model must be a positive multiple of 64, got {args.d_model}")
    heads = args.d_model // 64
    ARCH.update(d_model=args.d_model, n_heads=heads, n_kv_heads=heads, d_ff=args.d_ff or args.d_model * 8 // 3)
    if "WORLD_SIZE" not in os.environ:
        sys.exit(relaunch(sys.argv[1:]))
    runs: dict[str, list[dict]] = {}
    variants = args.variants.split(",")
    for r in range(args.repeat):  # interleaved: a slow spell of the machine hits every variant alike
        for i, variant in enumerate(variants, 1):
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"[run {r + 1}/{args.repeat}, {i}/{len(variants)}] {variant}: {args.warmup} warm-up + "
                      f"{args.iters} timed iterations", flush=True)
            runs.setdefault(variant, []).append(bench(variant, args.iters, args.warmup))
            if dist.get_rank() == 0:
                print(json.dumps(runs[variant][-1]), flush=True)
    results = {v: dict(rs[0], iter_s=statistics.median(x["iter_s"] for x in rs),
                       iter_min=min(x["iter_s"] for x in rs), iter_max=max(x["iter_s"] for x in rs),
                       runs=[x["iter_s"] for x in rs]) for v, rs in runs.items()}
    if dist.get_rank() != 0:
        return
    world = dist.get_world_size()
    print(table(results, world))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.write:
        if not {"adamw_zero2", "ours_zero2", "native_zero2"} <= set(results):
            sys.exit("--write needs the variants adamw_zero2, ours_zero2 and native_zero2")
        write_section(args.write, render(results, world, args))


def render(results: dict, world: int, args) -> str:
    """The BENCHMARKS.md section (figures filled from this run)."""
    ours, native, base = results["ours_zero2"], results["native_zero2"], results["adamw_zero2"]
    ours_over, native_over = ours["iter_s"] - base["iter_s"], native["iter_s"] - base["iter_s"]
    floor = ours["ns_gflop_max_rank"] / NS_GFLOPS
    return "\n".join([
        SECTION, "",
        f"`scripts/bench/optimizer.py`, {world} CPU ranks (gloo, 1 thread each), Granite {ARCH['d_model']} wide x "
        f"2 layers, d_ff {ARCH['d_ff']}, vocab {VOCAB}, {MICRO_BATCH}x{SEQ} tokens per rank, fp32 weights, Newton-Schulz in fp32 "
        f"for every Muon; median of {args.iters} iterations after {args.warmup} warm-up "
        "(iteration = forward + backward + step).", "",
        table(results, world), "",
        f"- Muon overhead over AdamW ZeRO-2: ours {ours_over:.3f} s, DeepSpeed native {native_over:.3f} s, "
        f"ratio ours/native {ours_over / native_over:.2f}.",
        f"- Our client step() (all groups, incl. the straddler all-reduce) takes {ours['opt_step_s']:.3f} s; "
        f"Newton-Schulz work on the busiest rank is {ours['ns_gflop_max_rank']:.0f} GFLOP, i.e. a floor of "
        f"{floor:.3f} s at {NS_GFLOPS:.0f} GFLOP/s fp32 ({floor / ours['opt_step_s']:.0%} of the step).",
        f"- State per rank: ours {max(ours['state_bytes']) / 2**20:.2f} MB = "
        f"{max(ours['state_bytes']) / (ours['unsharded_state_bytes'] / world):.3f} x (total Muon + AdamW state)/W; "
        f"native {max(native['state_bytes']) / 2**20:.2f} MB.",
        "- Timings come from a shared 2-core box: compare rows of one run, not runs; repeat the run "
        "and take the spread.", ""])


if __name__ == "__main__":
    sys.exit(run_main(main))  # the process group is destroyed on every exit path
