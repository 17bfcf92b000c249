"""``scaleout`` command line.

    scaleout train configs/tiny.yaml --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml
    scaleout train configs/tiny.yaml --optim.lr 0.01 --train.steps 50     # this process only
    accelerate launch -m trainer.cli train configs/125m.yaml              # launched by you
    scaleout coord-check --widths 64,128,256,512 --steps 5                # muP coordinate check
    scaleout lr-sweep --help                                              # muP lr-transfer sweep

Config errors are reported as one line naming the key, exit code 2, before any worker starts.
SIGTERM/SIGINT stop the run at the next step with a checkpoint (exit 0), SIGUSR1 too (exit 75,
requeue); one run per train.out_dir. Exit codes: trainer/exit_codes.py; how: trainer/lifecycle.py.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from trainer.configlib import ConfigError, iter_fields

EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; users asked for one line
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _train_parser() -> argparse.ArgumentParser:
    from trainer.config import Config

    p = _OneLineParser(prog="scaleout train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a decoder LM. Every config key can be overridden as --section.key VALUE "
                                   "(YAML syntax: 0.02, true, null, [0.9,0.95]).")
    p.add_argument("config", nargs="?", help="YAML recipe (configs/tiny.yaml, configs/125m.yaml, ...)")
    p.add_argument("--accelerate-config", metavar="YAML",
                   help="launch workers with `accelerate launch --config_file YAML` (e.g. "
                        "accelerate_configs/cpu_2proc_zero2.yaml); without it, train in this process")
    p.add_argument("--num-processes", type=int, help="override num_processes of --accelerate-config")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    group = p.add_argument_group("config keys")
    for key, tp, default, help_text in iter_fields(Config):
        group.add_argument(f"--{key}", metavar=_metavar(tp), default=argparse.SUPPRESS,
                           help=f"{help_text} (default: {default!r})")
    return p


def _metavar(tp) -> str:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name.upper().replace(" ", "")


def _overrides(ns: argparse.Namespace, extra: list[str]) -> list[str]:
    skip = {"config", "accelerate_config", "num_processes", "print_config"}
    out = []
    for key, value in vars(ns).items():
        if key not in skip:
            out += [f"--{key}", value]
    return out + extra


def _launch_world_size(accel_yaml: str | None, num_processes: int | None) -> int:
    if num_processes:
        return num_processes
    if accel_yaml:
        if not os.path.exists(accel_yaml):
            raise ConfigError(f"--accelerate-config: '{accel_yaml}' not found; use one of accelerate_configs/*.yaml")
        with open(accel_yaml) as f:
            return int((yaml.safe_load(f) or {}).get("num_processes", 1))
    return int(os.environ.get("WORLD_SIZE", "1"))


def preflight(cfg, world_size: int) -> None:
    """Every check that can fail on user input, run before any worker starts."""
    from trainer import checkpoint
    from trainer.build import build_arch
    from trainer.data import check_source, validate_curriculum

    try:
        arch = build_arch(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    validate_curriculum(cfg.data.curriculum, cfg.train.tokens_per_step, cfg.train.grad_accum, world_size,
                        arch["max_seq_len"])
    check_source(cfg.data)  # a missing local path fails here, not in a worker
    checkpoint.resolve_resume(cfg.checkpoint.resume, cfg.train.out_dir)


def cmd_train(argv: list[str]) -> int:
    from trainer.config import load_config

    ns, extra = _train_parser().parse_known_args(argv)
    overrides = _overrides(ns, extra)
    try:
        cfg = load_config(ns.config, overrides)
        world = _launch_world_size(ns.accelerate_config, ns.num_processes)
        if ns.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        preflight(cfg, world)
    except (ConfigError, FileNotFoundError) as e:
        sys.stderr.write(f"scaleout train: error: {e}\n")
        return EXIT_USAGE
    from trainer import lifecycle

    if ns.accelerate_config:  # this process is the launcher: lock, start the workers, forward signals
        args = ["--config_file", ns.accelerate_config]
        if ns.num_processes:
            args += ["--num_processes", str(ns.num_processes)]
        args += ["-m", "trainer.cli", "train"] + ([ns.config] if ns.config else []) + overrides
        return lifecycle.launch(args, cfg.train.out_dir)
    from trainer.loop import train

    # A worker (or a lone process): signals stop the run at a step boundary with a checkpoint,
    # user errors found while training are one line, exit 2 (trainer/exit_codes.py).
    return lifecycle.run_worker(lambda: train(cfg)["exit_code"])


def cmd_coord_check(argv: list[str]) -> int:
    from trainer.coord_check import main as coord_check

    return coord_check(argv)


def cmd_lr_sweep(argv: list[str]) -> int:
    from trainer.lr_sweep import main as lr_sweep

    return lr_sweep(argv)


COMMANDS = {"train": cmd_train, "coord-check": cmd_coord_check, "lr-sweep": cmd_lr_sweep}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: scaleout {{{names}}} ...\n\n{__doc__}", file=sys.stderr if argv else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else EXIT_USAGE
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
