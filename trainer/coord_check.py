"""Coordinate check: is muP working? Train a few steps at several widths and watch activation scales.

Under muP every activation's typical coordinate (mean |x|) stays the same order as width grows,
at init and after each update; under standard parametrization (SP) with one lr for all widths the
updates of Adam-trained matrices grow with width, so the logits and hidden states blow up (TP V,
sec. 5 and fig. 5; the ``mup`` package's ``get_coord_data``). A flat curve per step is the pass.

    scaleout coord-check --widths 64,128,256,512 --steps 5 --optim adamw --out docs/mup/coord_check

writes ``<out>_<optim>.csv`` (parametrization, optim, width, step, layer, mean_abs) and
``<out>_<optim>.png`` (one panel per parametrization x layer: mean |x| against width, a line per step).
"""

from __future__ import annotations

import argparse
import csv
import os

import torch

from models import build_model, granite_config, resolve_preset
from trainer.mup import MupConfig, apply_mup_init, mup_multipliers

PARAMETRIZATIONS = ("mup", "sp")


def coord_model(width: int, parametrization: str, *, base_width: int, n_layers: int, vocab: int, seed: int,
                mup_options: dict | None = None):
    """A small untied Granite of the given width (head_dim 16 fixed: heads grow with width);
    ``mup_options`` sets other ``MupConfig`` fields (e.g. attn_alpha) for the muP model."""
    arch = resolve_preset("tiny", d_model=width, n_layers=n_layers, n_heads=max(1, width // 16),
                          n_kv_heads=max(1, width // 16), d_ff=4 * width, max_seq_len=256, tie_embeddings=False)
    mup = MupConfig(enabled=parametrization == "mup", base_width=base_width, **(mup_options or {}))
    model = build_model(granite_config(arch, vocab, multipliers=mup_multipliers(arch, mup)), seed)
    apply_mup_init(model, mup, seed=seed)
    return model, mup


def coord_optimizer(model, mup: MupConfig, optim: str, lr: float, adamw_lr: float, muon_scale: str):
    """The run's own optimizer (``trainer.optim.build_optimizer``) with muP groups or SP (mup off)."""
    from trainer.config import Config
    from trainer.optim import build_optimizer
    from trainer.optim.config import OptimConfig

    cfg = Config(optim=OptimConfig(name=optim, lr=lr, adamw_lr=adamw_lr, scale=muon_scale), mup=mup)
    return build_optimizer(model, cfg)


def activation_scales(model, ids: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """mean |x| of the embedding, each block's attention/MLP branch and output, and the logits
    (after Granite's multipliers) for one forward pass; also returns the loss for the backward."""
    scales, hooks = {}, []

    def record(name):
        return lambda mod, inp, out: scales.__setitem__(
            name, (out[0] if isinstance(out, tuple) else out).detach().abs().mean().item())

    hooks.append(model.get_input_embeddings().register_forward_hook(record("embedding")))
    for i, block in enumerate(model.model.layers):
        hooks.append(block.self_attn.register_forward_hook(record(f"block{i}.attn")))
        hooks.append(block.mlp.register_forward_hook(record(f"block{i}.mlp")))
        hooks.append(block.register_forward_hook(record(f"block{i}.out")))
    try:
        out = model(input_ids=ids, labels=ids)
    finally:
        for h in hooks:
            h.remove()
    scales["logits"] = out.logits.detach().abs().mean().item()
    return scales, out.loss


def coord_records(widths, *, optim: str = "adamw", steps: int = 5, lr: float = 0.02, adamw_lr: float = 0.01,
                  muon_scale: str = "original", base_width: int | None = None, n_layers: int = 2,
                  vocab: int = 256, seq_len: int = 32, batch: int = 4, seed: int = 0,
                  parametrizations=PARAMETRIZATIONS) -> list[dict]:
    """Rows of (parametrization, optim, width, step, layer, mean_abs); ``step`` t is the forward
    pass after t optimizer updates. Every width sees the same token batches."""
    base_width = base_width or min(widths)
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=gen) for _ in range(steps + 1)]
    rows = []
    for param in parametrizations:
        for width in widths:
            model, mup = coord_model(width, param, base_width=base_width, n_layers=n_layers, vocab=vocab,
                                     seed=seed)
            opt = coord_optimizer(model, mup, optim, lr, adamw_lr, muon_scale)
            for step, ids in enumerate(batches):
                scales, loss = activation_scales(model, ids)
                rows += [dict(parametrization=param, optim=optim, width=width, step=step, layer=k, mean_abs=v)
                         for k, v in scales.items()]
                if step < steps:
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
    return rows


def scale_at(rows: list[dict], parametrization: str, width: int, step: int, layer: str = "logits") -> float:
    (value,) = [r["mean_abs"] for r in rows if (r["parametrization"], r["width"], r["step"], r["layer"])
                == (parametrization, width, step, layer)]
    return value


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: str, layers: list[str] | None = None) -> None:
    """One panel per (parametrization, layer): mean |x| vs width on log-log axes, a line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in PARAMETRIZATIONS if any(r["parametrization"] == p for r in rows)]
    all_layers = list(dict.fromkeys(r["layer"] for r in rows))
    layers = layers or [name for name in all_layers if name in ("embedding", "block0.attn", "block0.mlp")
                        or name.endswith(".out") or name == "logits"]
    steps = sorted({r["step"] for r in rows})
    fig, axes = plt.subplots(len(params), len(layers), figsize=(2.6 * len(layers), 2.6 * len(params)),
                             squeeze=False, sharex=True)
    cmap = plt.get_cmap("viridis")
    for i, param in enumerate(params):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            for step in steps:
                pts = sorted((r["width"], r["mean_abs"]) for r in rows
                             if (r["parametrization"], r["layer"], r["step"]) == (param, layer, step))
                ax.plot(*zip(*pts), marker="o", ms=3, color=cmap(step / max(1, steps[-1])), label=f"t={step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'μP' if param == 'mup' else 'SP'}: {layer}", fontsize=9)
            if i == len(params) - 1:
                ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel("mean |x|")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"coordinate check ({rows[0]['optim']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scaleout coord-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated model widths")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per width")
    p.add_argument("--out", default="docs/mup/coord_check", help="output prefix for the CSV and PNG")
    p.add_argument("--optim", choices=("adamw", "muon"), default="adamw",
                   help="adamw everywhere, or Muon on hidden matrices + AdamW on the rest")
    p.add_argument("--lr", type=float, default=0.02, help="Muon lr (base width)")
    p.add_argument("--adamw-lr", type=float, default=0.01, help="AdamW lr (base width)")
    p.add_argument("--muon-scale", choices=("original", "match_rms_adamw"), default="original")
    p.add_argument("--base-width", type=int, default=None, help="muP base width (default: the smallest)")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    rows = coord_records(widths, optim=args.optim, steps=args.steps, lr=args.lr, adamw_lr=args.adamw_lr,
                         muon_scale=args.muon_scale, base_width=args.base_width, n_layers=args.n_layers,
                         seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    prefix = f"{args.out}_{args.optim}"
    write_csv(rows, prefix + ".csv")
    plot(rows, prefix + ".png")
    lo, hi = min(widths), max(widths)
    for param in PARAMETRIZATIONS:
        ratios = [scale_at(rows, param, hi, t) / scale_at(rows, param, lo, t) if scale_at(rows, param, lo, t)
                  else float("nan") for t in range(1, args.steps + 1)]
        print(f"{param:>3}: logits mean|x| width {hi} / width {lo} after steps 1..{args.steps}: "
              + " ".join(f"{r:.2f}" for r in ratios))
    print(f"wrote {prefix}.csv and {prefix}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
