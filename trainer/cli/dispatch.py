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
requeue); one run per train.out_dir. Exit codes: trainer/launch/exit_codes.py; how: trainer/launch/.
"""

from __future__ import annotations

import sys

from trainer.launch.exit_codes import EXIT_USAGE


def cmd_train(argv: list[str]) -> int:
    from trainer.cli.train import cmd_train as train

    return train(argv)


def cmd_coord_check(argv: list[str]) -> int:
    from trainer.studies.coord_check import main as coord_check

    return coord_check(argv)


def cmd_lr_sweep(argv: list[str]) -> int:
    from trainer.studies.lr_sweep import main as lr_sweep

    return lr_sweep(argv)


def cmd_export(argv: list[str]) -> int:
    from trainer.cli.export import main as export

    return export(argv)


def cmd_generate(argv: list[str]) -> int:
    from trainer.cli.generate import main_generate

    return main_generate(argv)


def cmd_eval(argv: list[str]) -> int:
    from trainer.cli.generate import main_eval

    return main_eval(argv)


def cmd_push(argv: list[str]) -> int:
    from trainer.cli.push import main as push

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
