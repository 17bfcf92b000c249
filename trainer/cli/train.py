"""``scaleout train``: parse the flags and the config, run the preflight, then either launch the
workers (``--accelerate-config``: this process becomes the launcher, ``trainer/launch/launcher.py``)
or train in this process (a worker started by ``accelerate launch``, or a lone process)."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from trainer.cli.preflight import launch_machines, launch_world_size, preflight
from trainer.config.args import OneLineParser
from trainer.config.base import ConfigError, iter_fields
from trainer.launch.exit_codes import EXIT_USAGE


class _Once(argparse.Action):
    """Store a flag's value; a flag given twice is an error, not 'the last one wins'."""

    def __call__(self, parser, namespace, values, option_string=None):
        if hasattr(namespace, self.dest):
            parser.error(f"{option_string} is given twice ({getattr(namespace, self.dest)!r} and {values!r}); "
                         "give it once")
        setattr(namespace, self.dest, values)


def _train_parser() -> argparse.ArgumentParser:
    from trainer.config import Config

    p = OneLineParser(prog="scaleout train", allow_abbrev=False,  # --train.step must not become --train.steps
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a decoder LM. Every config key can be overridden as --section.key VALUE "
                                   "(YAML syntax: 0.02, true, null, [0.9,0.95]).")
    p.add_argument("config", nargs="?", help="YAML recipe (configs/tiny.yaml, configs/125m.yaml, ...)")
    p.add_argument("--accelerate-config", metavar="YAML", action=_Once, default=argparse.SUPPRESS,
                   help="launch workers with `accelerate launch --config_file YAML` (e.g. "
                        "accelerate_configs/cpu_2proc_zero2.yaml); without it, train in this process")
    p.add_argument("--num-processes", type=int, action=_Once, default=argparse.SUPPRESS,
                   help="override num_processes of --accelerate-config (all machines together)")
    node = p.add_argument_group("one node of a multi-node run (with --accelerate-config; passed to accelerate "
                                "launch as --num_machines etc.; scripts/slurm/train.sbatch fills them per node)")
    for flag, tp, what in _MACHINE_FLAGS:
        node.add_argument(f"--{flag}", type=tp, action=_Once, default=argparse.SUPPRESS, help=what)
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    group = p.add_argument_group("config keys")
    for key, tp, default, help_text in iter_fields(Config):
        group.add_argument(f"--{key}", metavar=_metavar(tp), default=argparse.SUPPRESS, action=_Once,
                           help=f"{help_text} (default: {default!r})")
    return p


_MACHINE_FLAGS = (("num-machines", int, "number of machines (nodes)"),
                  ("machine-rank", int, "this machine's rank, 0 .. num-machines - 1 (0 takes the run lock)"),
                  ("main-process-ip", str, "address of machine rank 0 (the rendezvous host)"),
                  ("main-process-port", int, "rendezvous port on machine rank 0"))


def _machine_args(ns: argparse.Namespace) -> list[str]:
    """``--num-machines 2`` -> ``--num_machines 2`` for ``accelerate launch``, for the flags given."""
    out = []
    for flag, *_ in _MACHINE_FLAGS:
        value = getattr(ns, flag.replace("-", "_"), None)
        if value is not None:
            out += [f"--{flag.replace('-', '_')}", str(value)]
    return out


def _metavar(tp) -> str:
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name.upper().replace(" ", "")


def _glue_negative_values(argv: list[str], options: set[str]) -> list[str]:
    """``--optim.lr -2e-5`` -> ``--optim.lr=-2e-5``: argparse reads ``-2e-5``, ``-5M`` or ``-.inf`` as an
    option and reports 'expected one argument'; glued, the field's own check names what is wrong."""
    out, i = [], 0
    while i < len(argv):
        arg, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        if arg[2:] in options and nxt[:1] == "-" and nxt[:2] != "--" and len(nxt) > 1:
            out.append(f"{arg}={nxt}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def _overrides(ns: argparse.Namespace, extra: list[str]) -> list[str]:
    skip = {"config", "accelerate_config", "num_processes", "print_config"} | {
        flag.replace("-", "_") for flag, *_ in _MACHINE_FLAGS}
    out = []
    for key, value in vars(ns).items():
        if key not in skip:
            out += [f"--{key}", value]
    return out + extra


def cmd_train(argv: list[str]) -> int:
    from trainer.launch import launcher, status, worker

    status.hold_early_usr1()  # a preemption warning while importing torch must not kill the process
    from trainer.config import Config, load_config

    options = {key for key, *_ in iter_fields(Config)} | {"num-processes", "accelerate-config"} | {
        flag for flag, *_ in _MACHINE_FLAGS}
    ns, extra = _train_parser().parse_known_args(_glue_negative_values(argv, options))
    ns.accelerate_config = getattr(ns, "accelerate_config", None)
    ns.num_processes = getattr(ns, "num_processes", None)
    overrides = _overrides(ns, extra)
    try:
        cfg = load_config(ns.config, overrides)
        world = launch_world_size(ns.accelerate_config, ns.num_processes)
        machine = _machine_args(ns)
        if machine and not ns.accelerate_config:
            raise ConfigError(f"{machine[0].replace('_', '-')} needs --accelerate-config (it is passed to accelerate "
                              "launch); or run `accelerate launch --num_machines ...` yourself")
        if ns.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        if ns.accelerate_config or status.LAUNCHER_ENV not in os.environ:
            machines = launch_machines(ns.accelerate_config, getattr(ns, "num_machines", None))
            preflight(cfg, world, ns.config, machines)  # a worker of our launcher: the launcher ran it already
    except (ConfigError, FileNotFoundError) as e:
        message = " ".join(str(e).split())  # one line, whatever a library put in the message
        sys.stderr.write(f"scaleout train: error: {message}\n")
        return EXIT_USAGE
    if ns.accelerate_config:  # this process is the launcher: lock, start the workers, forward signals
        args = ["--config_file", ns.accelerate_config]
        if ns.num_processes:
            args += ["--num_processes", str(ns.num_processes)]
        args += machine + ["-m", "trainer.cli", "train"] + ([ns.config] if ns.config else []) + overrides
        # One launcher per machine; only machine rank 0's holds the run lock (train.out_dir is shared).
        return launcher.launch(args, cfg.train.out_dir, lock=not getattr(ns, "machine_rank", 0))
    from trainer.run.loop import train

    # A worker (or a lone process): signals stop the run at a step boundary with a checkpoint,
    # user errors found while training are one line, exit 2 (trainer/launch/exit_codes.py).
    return worker.run_worker(lambda: train(cfg)["exit_code"])
