"""Coordinate check: is muP working? Train a few steps at several widths and watch activation scales.

Under muP every activation's typical coordinate (mean |x|) stays the same order as width grows,
at init and after each update; under standard parametrization (SP) with one lr for all widths the
updates of Adam-trained matrices grow with width, so the logits and hidden states blow up (TP V,
sec. 5 and fig. 5; the ``mup`` package's ``get_coord_data``). A flat curve per step is the pass,
in the limit: each step's forward is on a fresh batch, and what an update does to inputs it was not
built from shrinks like 1/sqrt(width) under muP, a finite-width term that dominates while the width
is below the batch's token count (BENCHMARKS.md, "Coordinate check"). ``update_records`` separates
it from the width-independent part with one step per width.

    scaleout coord-check --widths 64,128,256,512 --steps 5 --optim adamw     # -> runs/coord_check/
    scaleout coord-check --out docs/mup/coord_check      # regenerate the committed figures on purpose

writes ``<out>_<optim>.csv`` (parametrization, optim, width, step, layer, mean_abs),
``<out>_<optim>.png`` (one panel per parametrization x layer: mean |x| against width, a line per step)
and ``<out>_<optim>_update.csv`` (``update_records``: one step's dW x per Linear and width).
"""

from __future__ import annotations

import argparse
import csv
import os

import torch

from models import build_model, granite_config, model_config, resolve_moe, resolve_preset
from trainer.config.mup import MupConfig
from trainer.mup import apply_mup_init, mup_multipliers

PARAMETRIZATIONS = ("mup", "sp")


def coord_model(width: int, parametrization: str, *, base_width: int, n_layers: int, vocab: int, seed: int,
                mup_options: dict | None = None, model_type: str = "granite"):
    """A small untied Granite of the given width (head_dim 16 fixed: heads grow with width);
    ``mup_options`` sets other ``MupConfig`` fields (e.g. attn_alpha) for the muP model; ``model_type``
    another class with the muP multipliers (``models.MUP_TYPES``: granitemoe's 8 experts, top-2, each
    half the dense MLP's width)."""
    arch = resolve_preset("tiny", d_model=width, n_layers=n_layers, n_heads=max(1, width // 16),
                          n_kv_heads=max(1, width // 16), d_ff=4 * width, max_seq_len=256, tie_embeddings=False)
    mup = MupConfig(enabled=parametrization == "mup", base_width=base_width, **(mup_options or {}))
    if model_type == "granite":
        config = granite_config(arch, vocab, multipliers=mup_multipliers(arch, mup))
    else:
        config = model_config(model_type, arch, vocab, multipliers=mup_multipliers(arch, mup),
                              moe=resolve_moe(model_type, arch))
    model = build_model(config, seed)
    apply_mup_init(model, mup, seed=seed)
    return model, mup


def coord_optimizer(model, mup: MupConfig, optim: str, lr: float, adamw_lr: float, muon_scale: str):
    """The run's own optimizer (``trainer.optim.build_optimizer``) with muP groups or SP (mup off)."""
    from trainer.config import Config
    from trainer.config.optim import OptimConfig
    from trainer.optim import build_optimizer

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


def _linear_inputs(model, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The input (tokens x features) of every Linear for one forward pass, and the loss."""
    inputs, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: inputs.__setitem__(name, i[0].detach().reshape(-1, i[0].shape[-1]))))
    try:
        loss = model(input_ids=ids, labels=ids).loss
    finally:
        for h in hooks:
            h.remove()
    return inputs, loss


def _layer_label(name: str, readout_name: str) -> str:
    if name == readout_name:
        return "readout"
    parts = name.split(".")
    return f"block{parts[2]}.{parts[-1]}" if parts[:2] == ["model", "layers"] else name


def update_records(widths, *, optim: str = "adamw", lr: float = 0.02, adamw_lr: float = 0.01,
                   muon_scale: str = "original", base_width: int | None = None, n_layers: int = 2,
                   vocab: int = 256, seq_len: int = 32, batch: int = 4, seed: int = 0,
                   parametrizations=PARAMETRIZATIONS) -> list[dict]:
    """One optimizer step per width; for every Linear, how much the step moves its output on the
    step's own inputs x (rows: parametrization, optim, width, layer, moved, aligned, unaligned).

    ``moved`` = rms(dW x). ``unaligned`` = rms(dW x'), x' = x with its coordinates permuted: what
    an input the update was not built from gets. An Adam step is ~ lr * sign(gradient) entrywise,
    so this is a random sum of fan_in terms, lr/m * sqrt(fan_in) * rms(x) ~ 1/sqrt(width) under
    muP: a finite-width term that vanishes in the limit. ``aligned`` = sqrt(moved^2 - unaligned^2),
    the part coherent with x; muP makes it width-independent (TP V: Theta(1) feature updates), SP
    with one AdamW lr makes it grow like width. Muon's step is orthogonalized, full rank while the
    width is below the step's token count, so there every input is moved alike (aligned ~ 0); its
    ``moved`` is width-independent under muP. The readout is measured after the logits' multiplier."""
    base_width = base_width or min(widths)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    rows = []
    for param in parametrizations:
        for width in widths:
            model, mup = coord_model(width, param, base_width=base_width, n_layers=n_layers, vocab=vocab,
                                     seed=seed)
            opt = coord_optimizer(model, mup, optim, lr, adamw_lr, muon_scale)
            readout = model.get_output_embeddings()
            readout_name = next(n for n, m in model.named_modules() if m is readout)
            mods = dict(model.named_modules())
            inputs, loss = _linear_inputs(model, ids)
            before = {name: mods[name].weight.detach().clone() for name in inputs}
            loss.backward()
            opt.step()
            perm = torch.Generator().manual_seed(seed + 1)
            for name, x in inputs.items():
                delta = mods[name].weight.detach() - before[name]
                scale = 1.0 / getattr(model.config, "logits_scaling", 1.0) if name == readout_name else 1.0
                moved = (x @ delta.T).pow(2).mean().sqrt().item() * scale
                x_perm = x[:, torch.randperm(x.shape[1], generator=perm)]
                unaligned = (x_perm @ delta.T).pow(2).mean().sqrt().item() * scale
                rows.append(dict(parametrization=param, optim=optim, width=width,
                                 layer=_layer_label(name, readout_name), moved=moved,
                                 aligned=max(0.0, moved ** 2 - unaligned ** 2) ** 0.5, unaligned=unaligned))
    return rows


def update_ratios(rows: list[dict], parametrization: str, key: str = "aligned") -> dict[str, float]:
    """Per layer, ``key`` at the widest width / at the narrowest (layers the step did not move left out)."""
    sel = [r for r in rows if r["parametrization"] == parametrization]
    lo, hi = min(r["width"] for r in sel), max(r["width"] for r in sel)
    at = {(r["width"], r["layer"]): r[key] for r in sel}
    return {layer: at[(hi, layer)] / at[(lo, layer)] for (w, layer) in at if w == lo and at[(lo, layer)] > 0}


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
    from trainer.config.args import OneLineParser

    p = OneLineParser(prog="scaleout coord-check", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--widths", default="64,128,256,512", help="comma-separated model widths")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per width")
    p.add_argument("--out", default="runs/coord_check/coord_check",
                   help="output prefix for the CSV and PNG (the committed figures: docs/mup/coord_check)")
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
    updates = update_records(widths, optim=args.optim, lr=args.lr, adamw_lr=args.adamw_lr,
                             muon_scale=args.muon_scale, base_width=args.base_width, n_layers=args.n_layers,
                             seq_len=args.seq_len, batch=args.batch, seed=args.seed)
    write_csv(updates, prefix + "_update.csv")
    for param in PARAMETRIZATIONS:
        keys = ("moved", "aligned", "unaligned") if args.optim == "adamw" else ("moved", "unaligned")
        ratios = {key: update_ratios(updates, param, key) for key in keys}
        print(f"{param:>3}: one-step dW x width {hi} / width {lo}, min-max over layers: "
              + ", ".join(f"{key} {min(r.values()):.2f}-{max(r.values()):.2f}" for key, r in ratios.items()))
    print(f"wrote {prefix}.csv, {prefix}_update.csv and {prefix}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
