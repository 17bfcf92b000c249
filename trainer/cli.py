"""``scaleout`` command line.

    scaleout train configs/tiny.yaml --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml
    scaleout train configs/tiny.yaml --optim.lr 0.01 --train.steps 50     # this process only
    accelerate launch -m trainer.cli train configs/125m.yaml              # launched by you
    scaleout train configs/1b.yaml --accelerate-config accelerate_configs/multinode_zero2.yaml \
        --num-machines 4 --machine-rank 0 --main-process-ip HEAD --main-process-port 29500  # one node of 4
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

from trainer.configlib import ConfigError, iter_fields, load_yaml_file
from trainer.exit_codes import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; users asked for one line
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


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


def _launch_world_size(accel_yaml: str | None, num_processes: int | None) -> int:
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if accel_yaml:
        n = check_accelerate_config(accel_yaml)
        return num_processes or n
    return num_processes or int(os.environ.get("WORLD_SIZE", "1"))


def check_accelerate_config(path: str) -> int:
    """Read ``--accelerate-config`` the way ``accelerate launch`` will; returns its num_processes."""
    from accelerate.commands.config.config_args import ClusterConfig

    fix = "use one of accelerate_configs/*.yaml"
    tree = load_yaml_file(path, "--accelerate-config", fix)
    n = tree.get("num_processes", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--accelerate-config: num_processes in '{path}' must be an integer >= 1, got {n!r}")
    try:
        ClusterConfig.from_yaml_file(path)  # unknown keys, bad enum values: what accelerate itself rejects
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"--accelerate-config: '{path}' is not a valid accelerate config "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {fix}") from None
    return n


def preflight(cfg, world_size: int) -> None:
    """Every check that can fail on user input, run before any worker starts."""
    from trainer import checkpoint
    from trainer.data import check_source, validate_curriculum

    tok = None
    if cfg.init.from_:  # the model folder (or Hub id) brings the architecture and the tokenizer
        from models import arch_of
        from trainer.init_from import read_init

        init = read_init(cfg)
        arch, tok = arch_of(init.config), init.tokenizer()
    else:
        try:
            arch = cfg.model.arch()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if (arch["d_model"] // arch["n_heads"]) % 2:  # rotary embeddings rotate pairs of channels
        raise ConfigError(f"model.d_model / model.n_heads = {arch['d_model'] // arch['n_heads']} must be even "
                          "(rotary embeddings); change model.d_model or model.n_heads")
    validate_curriculum(cfg.data.curriculum, cfg.train.tokens_per_step, cfg.train.grad_accum, world_size,
                        arch["max_seq_len"])
    check_source(cfg.data, tokenizer=tok)  # opens the source and reads a few records: bad data fails here
    if cfg.data.val_source:
        check_source(cfg.data, "val_source", tokenizer=tok)
    _check_resume(checkpoint.resume_candidates(cfg.checkpoint.resume, cfg.train.out_dir), world_size,
                  cfg.data.partitions)


def _check_resume(candidates: list[str], world_size: int, partitions: int) -> None:
    """A checkpoint resumes at any number of processes that divides its data partitions (saved in
    its config); one in the format before elastic resume does not resume. The newest checkpoint
    whose meta.json reads decides; a damaged one is the workers' to skip."""
    from trainer import checkpoint
    from trainer.data.curriculum import check_partitions

    for path in candidates:
        try:
            saved = checkpoint.read_meta(path)
        except (OSError, ValueError):
            continue
        if os.path.isdir(os.path.join(path, "accelerate")) and not os.path.isdir(os.path.join(path, "state")):
            raise ConfigError(f"checkpoint.resume: '{path}' was {checkpoint.OLD_FORMAT}")
        saved_parts = saved.get("config", {}).get("data", {}).get("partitions", partitions)
        if saved_parts != partitions:
            raise ConfigError(f"checkpoint.resume: '{path}' was saved with data.partitions={saved_parts}, the recipe "
                              f"has {partitions}; set --data.partitions {saved_parts}")
        check_partitions(partitions, world_size)
        return
    check_partitions(partitions, world_size)


def cmd_train(argv: list[str]) -> int:
    from trainer import lifecycle

    lifecycle.hold_early_usr1()  # a preemption warning while importing torch must not kill the process
    from trainer.config import Config, load_config

    options = {key for key, *_ in iter_fields(Config)} | {"num-processes", "accelerate-config"} | {
        flag for flag, *_ in _MACHINE_FLAGS}
    ns, extra = _train_parser().parse_known_args(_glue_negative_values(argv, options))
    ns.accelerate_config = getattr(ns, "accelerate_config", None)
    ns.num_processes = getattr(ns, "num_processes", None)
    overrides = _overrides(ns, extra)
    try:
        cfg = load_config(ns.config, overrides)
        world = _launch_world_size(ns.accelerate_config, ns.num_processes)
        machine = _machine_args(ns)
        if machine and not ns.accelerate_config:
            raise ConfigError(f"{machine[0].replace('_', '-')} needs --accelerate-config (it is passed to accelerate "
                              "launch); or run `accelerate launch --num_machines ...` yourself")
        if ns.print_config:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        preflight(cfg, world)
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
        return lifecycle.launch(args, cfg.train.out_dir, lock=not getattr(ns, "machine_rank", 0))
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


def cmd_export(argv: list[str]) -> int:
    from trainer.export import main as export

    return export(argv)


def cmd_generate(argv: list[str]) -> int:
    from trainer.inference import main_generate

    return main_generate(argv)


def cmd_eval(argv: list[str]) -> int:
    from trainer.inference import main_eval

    return main_eval(argv)


def cmd_push(argv: list[str]) -> int:
    from trainer.hub import main as push

    return push(argv)


COMMANDS = {"train": cmd_train, "coord-check": cmd_coord_check, "lr-sweep": cmd_lr_sweep, "export": cmd_export,
            "generate": cmd_generate, "eval": cmd_eval, "push": cmd_push}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(COMMANDS)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        sys.stderr.write(f"scaleout: error: unknown command '{argv[0]}'; choose one of {names}\n")
        return EXIT_USAGE
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: scaleout {{{names}}} ...\n\n{__doc__}", file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else EXIT_USAGE
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
