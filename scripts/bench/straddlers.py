"""The straddler exchange at W = 2 ... 256 without launching that many processes (issue 19).

    .venv/bin/python scripts/bench/straddlers.py [--worlds 2,8,64,256] [--write BENCHMARKS.md]

For the 125m and 1b presets (Granite, sharded Muon's hidden group, fp32), DeepSpeed ZeRO-1/2's
partitioning is simulated (``trainer.state.fragments.simulate_zero_fragments``, checked against real
runs at W=2 and W=4 in tests/test_muon_zero.py) and fed to the real layout code
(``trainer.optim.layout.layout_from_fragments``, which picks each straddler's owner). Per rank and step:

  before  every rank all-reduced one buffer holding every straddler of the group (ring all-reduce:
          2 (W-1)/W x the buffer sent and as much received), and every holder of a piece ran its
          Newton-Schulz;
  after   a holder sends its piece to the owner and receives its slice back; the owner receives the
          others' pieces and sends their slices back; only the owner runs Newton-Schulz.

Bytes are fp32 (4 per element; the slices come back in the master dtype). The peak temporary buffer is
what a rank allocates for the exchange: before, the whole buffer; after, the matrices it owns. Newton-
Schulz FLOPs per rank: its whole matrices plus its straddlers (5 quintic steps), max and mean over ranks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from markers import write_between  # noqa: E402

from models import build_model, model_config, resolve_preset  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.mup import classify_params  # noqa: E402
from trainer.optim.layout import layout_from_fragments  # noqa: E402
from trainer.optim.matrices import param_splits  # noqa: E402
from trainer.optim.newton_schulz import newton_schulz_flops  # noqa: E402
from trainer.state.fragments import simulate_zero_fragments  # noqa: E402

BYTES = 4


def hidden_group(preset: str) -> tuple[list[int], list]:
    """Numels and splits of the Muon group's params, in group order (a meta-device model: no memory)."""
    with torch.device("meta"):
        model = build_model(model_config("granite", resolve_preset(preset), 32000))
    classes = classify_params(model, Config().mup.class_overrides)
    names = [n for n, c in classes.items() if c == "hidden"]
    splits = param_splits(model, names)
    params = dict(model.named_parameters())
    return [params[n].numel() for n in names], [splits[n] for n in names]


def figures(numels: list[int], splits: list, world: int) -> dict:
    everyone = simulate_zero_fragments(numels, world)
    layouts = [layout_from_fragments(everyone, r, splits, numels) for r in range(world)]
    straddlers = layouts[0].straddlers
    buffer = sum(st.shape[0] * st.shape[1] for st in straddlers)
    before, after = [], []
    for r, lay in enumerate(layouts):
        whole = sum(newton_schulz_flops(pc.shape) for pc in lay.pieces if pc.straddler is None)
        mine = [lay.straddlers[pc.straddler] for pc in lay.pieces if pc.straddler is not None]
        ring = 2 * (world - 1) / world * buffer * BYTES if buffer else 0
        before.append({"sent": ring, "received": ring, "buffer": buffer * BYTES,
                       "flops": whole + sum(newton_schulz_flops(st.shape) for st in mine)})
        sent = received = temp = 0
        flops = whole
        for pc in lay.pieces:
            if pc.straddler is None:
                continue
            st = lay.straddlers[pc.straddler]
            others = sum(n for rank, _, n in st.holders if rank != r)
            if st.owner == r:  # receives the others' pieces, sends their slices back
                received += others * BYTES
                sent += others * BYTES
                temp += st.shape[0] * st.shape[1] * BYTES
                flops += newton_schulz_flops(st.shape)
            else:  # sends its piece, receives its slice
                sent += pc.numel * BYTES
                received += pc.numel * BYTES
                temp += pc.numel * BYTES
        after.append({"sent": sent, "received": received, "buffer": temp, "flops": flops})
    return {"world": world, "straddlers": len(straddlers), "before": before, "after": after}


def mb(x: float) -> str:
    return f"{x / 1e6:,.1f}"


def table(rows: list[tuple[str, dict]]) -> str:
    out = ["| model | W | straddlers | sent+received per rank, MB (max): before → after | peak buffer per rank, "
           "MB (max): before → after | NS GFLOP per rank, max / mean: before → after |",
           "|---|---|---|---|---|---|"]
    for preset, f in rows:
        b, a = f["before"], f["after"]

        def peak(rs, key):
            return max(r[key] for r in rs)

        io_b, io_a = max(r["sent"] + r["received"] for r in b), max(r["sent"] + r["received"] for r in a)
        fl = [(peak(rs, "flops") / 1e9, statistics.mean(r["flops"] for r in rs) / 1e9) for rs in (b, a)]
        out.append(f"| {preset} | {f['world']} | {f['straddlers']} | {mb(io_b)} → {mb(io_a)} | "
                   f"{mb(peak(b, 'buffer'))} → {mb(peak(a, 'buffer'))} | "
                   f"{fl[0][0]:,.1f} / {fl[0][1]:,.1f} → {fl[1][0]:,.1f} / {fl[1][1]:,.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--worlds", default="2,8,64,256")
    ap.add_argument("--presets", default="125m,1b")
    ap.add_argument("--write", help="replace the section between the bench markers in this file")
    args = ap.parse_args()
    rows = []
    for preset in args.presets.split(","):
        numels, splits = hidden_group(preset)
        for world in map(int, args.worlds.split(",")):
            rows.append((preset, figures(numels, splits, world)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.write:
        write_between(args.write, "straddlers", text)


if __name__ == "__main__":
    main()
