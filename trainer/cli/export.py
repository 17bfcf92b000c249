"""``scaleout export``: a checkpoint or run directory as a plain transformers folder."""

from __future__ import annotations

import sys

from trainer.config.args import OneLineParser
from trainer.config.base import ConfigError
from trainer.hf.export import WEIGHTS, export_source, quiet_libraries
from trainer.launch.exit_codes import EXIT_USAGE, StorageError


def main(argv: list[str]) -> int:
    p = OneLineParser(prog="scaleout export", allow_abbrev=False,
                       description="Export a checkpoint as a plain transformers folder (one process, no GPU).")
    p.add_argument("src", metavar="CHECKPOINT_OR_RUN_DIR",
                   help="runs/NAME (its newest intact checkpoint) or runs/NAME/checkpoints/step_N")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/exports/step_N_WEIGHTS)")
    p.add_argument("--weights", choices=WEIGHTS, default="auto",
                   help="ema, raw, or auto (the EMA when the checkpoint has one)")
    ns = p.parse_args(argv)
    quiet_libraries()
    try:
        warn = lambda m: print(f"warning: {m}", file=sys.stderr)  # noqa: E731
        used, path, out = export_source(ns.src, ns.out, ns.weights, warn=warn)
    except (ConfigError, FileNotFoundError) as e:
        sys.stderr.write(f"scaleout export: error: {' '.join(str(e).split())}\n")
        return EXIT_USAGE
    except StorageError as e:  # a failed write: the partial folder is already removed
        sys.stderr.write(f"scaleout export: error: {e}\n")
        return e.exit_code
    print(f"exported {path} ({used} weights) to {out}")
    return 0
