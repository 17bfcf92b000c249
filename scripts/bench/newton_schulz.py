"""Orthogonalization methods (``optim.ns_method``) side by side: accuracy, cost and training effect.

    .venv/bin/python scripts/bench/newton_schulz.py               # accuracy + cost (a few minutes)
    .venv/bin/python scripts/bench/newton_schulz.py --train       # + the tiny recipe, 2 seeds per method

Accuracy: the singular values of each method's output (min, max, RMS of sigma - 1; 5 steps, fp32) on
random Gaussian matrices of the 125m shapes and on real Muon momentum matrices (the Nesterov direction
the optimizer orthogonalizes) of the tiny and a 768-wide model after 30 steps on the embedded corpus.
Cost: matmul FLOPs and CPU time (fp32, one thread, batched by shape as the optimizer does: every
matrix of that shape in a model of 2 layers) on the 125m and 1b matrix shapes, as ratios to quintic.
Training: ``configs/tiny.yaml`` in one process (no DeepSpeed: the same global batch and schedule),
150 steps, seeds 0 and 1, validation loss every 25 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainer.optim.orthogonalize import NS_METHODS, orthogonalize, orthogonalize_flops  # noqa: E402

SHAPES = {"125m": [(768, 768), (2048, 768), (768, 2048)],
          "1b": [(2048, 2048), (512, 2048), (5632, 2048), (2048, 5632)]}
PER_LAYER = {(768, 768): 4, (2048, 768): 2, (768, 2048): 1, (2048, 2048): 2, (512, 2048): 2,
             (5632, 2048): 2, (2048, 5632): 1}  # q, k, v, o / gate, up, down (1b: GQA k, v)


def sigma_stats(G: torch.Tensor, O: torch.Tensor) -> tuple[float, float, float]:
    """min, max and RMS(sigma - 1) of the output's singular values on G's numerical rank: a momentum
    matrix of a short run has rank <= the tokens it saw, and an odd polynomial keeps a zero singular
    value at zero (so the top rank(G) output values are the ones the iteration moved towards 1)."""
    s_in, s = torch.linalg.svdvals(G.double()), torch.linalg.svdvals(O.double())
    s = s[:int((s_in > 1e-6 * s_in.max()).sum())]
    return s.min().item(), s.max().item(), (s - 1).pow(2).mean().sqrt().item()


def momentum_matrices(width: int, steps: int = 30) -> list[torch.Tensor]:
    """The Nesterov directions ShardedMuon orthogonalizes after ``steps`` steps of a 2-layer model."""
    from trainer.optim.muon import muon_update
    from trainer.studies.coord_check import coord_model, coord_optimizer
    from trainer.studies.lr_sweep import sweep_data

    train, _, vocab = sweep_data(steps=steps, batch=4, seq_len=128, val_batches=1)
    model, mup = coord_model(width, "mup", base_width=width, n_layers=2, vocab=vocab, seed=0)
    opt = coord_optimizer(model, mup, "muon", 0.01, 0.004, "match_rms_adamw")
    for i, ids in enumerate(train):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        if i < len(train) - 1:  # the last step's gradient stays, for the direction below
            opt.zero_grad()
    out = []
    for group in opt.param_groups:
        if group["kind"] == "muon":
            for p in group["params"]:
                m = opt.state[p]["momentum_buffer"].clone()
                out.append(muon_update(p.grad, m, group["momentum"], group["nesterov"]).view(p.shape))
    return out


def accuracy() -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    cases = {f"random {a}x{b}": [torch.randn(a, b, generator=g)] for a, b in SHAPES["125m"]}
    cases["momentum, tiny (128 wide)"] = momentum_matrices(128)
    cases["momentum, 768 wide"] = momentum_matrices(768, steps=10)
    for name, mats in cases.items():
        for method in NS_METHODS:
            stats = [sigma_stats(M, orthogonalize(M, method, 5, torch.float32)) for M in mats]
            rows.append({"case": name, "method": method, "min": min(s[0] for s in stats),
                         "max": max(s[1] for s in stats), "rms": statistics.mean(s[2] for s in stats)})
            print(rows[-1], flush=True)
    return rows


def cost(repeats: int = 3) -> list[dict]:
    rows = []
    for model, shapes in SHAPES.items():
        times, flops = {}, {}
        for method in NS_METHODS:
            total_t, total_f = 0.0, 0
            for shape in shapes:
                batch = torch.randn(2 * PER_LAYER[shape], *shape)
                orthogonalize(batch[:1], method, 5, torch.float32)  # warm-up
                ts = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    orthogonalize(batch, method, 5, torch.float32)
                    ts.append(time.perf_counter() - t)
                total_t += statistics.median(ts)
                total_f += len(batch) * orthogonalize_flops(shape, method)
            times[method], flops[method] = total_t, total_f
            print(model, method, f"{total_t:.2f} s", f"{total_f / 1e9:.1f} GFLOP", flush=True)
        for method in NS_METHODS:
            rows.append({"model": model, "method": method, "seconds": times[method], "gflop": flops[method] / 1e9,
                         "time_ratio": times[method] / times["quintic"], "flop_ratio": flops[method] / flops["quintic"]})
    return rows


def training(steps: int = 150, methods: tuple[str, ...] = NS_METHODS) -> list[dict]:
    from trainer.config import load_config
    from trainer.run.loop import train

    rows = []
    for method in methods:
        for seed in (0, 1):
            with tempfile.TemporaryDirectory() as out:
                cfg = load_config("configs/tiny.yaml", [
                    "--optim.ns_method", method, "--train.seed", str(seed), "--train.steps", str(steps),
                    "--train.eval_every", "25", "--dist.deepspeed_config", "null", "--log.trackers", "[]",
                    "--log.progress", "false", "--train.out_dir", out, "--checkpoint.every", "0"])
                t, printed = time.perf_counter(), io.StringIO()
                with contextlib.redirect_stdout(printed):  # "step N: val/loss X, ..." every 25 steps
                    result = train(cfg)
                val = {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+): val/loss ([0-9.]+)", printed.getvalue())}
                history = json.load(open(os.path.join(out, "ranks", "rank0.json")))["history"]
                rows.append({"method": method, "seed": seed, "val": result["val/loss"], "val_curve": val,
                             "train_curve": [h["loss"] for h in history], "seconds": time.perf_counter() - t})
            print(method, seed, f"val {result['val/loss']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--skip-static", action="store_true", help="only the training comparison")
    ap.add_argument("--only", choices=["accuracy", "cost"], help="one of the static measurements")
    ap.add_argument("--methods", default=",".join(NS_METHODS), help="the methods --train compares")
    ap.add_argument("--json", default="runs/bench/newton_schulz.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    report = {}
    if not args.skip_static:
        report["accuracy"] = accuracy() if args.only in (None, "accuracy") else None
        report["cost"] = cost() if args.only in (None, "cost") else None
    if args.train:
        report["training"] = training(methods=tuple(args.methods.split(",")))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    json.dump(report, open(args.json, "w"), indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
