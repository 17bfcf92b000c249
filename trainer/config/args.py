"""The argparse parser every ``scaleout`` command uses: a usage error is one line and exit code 2."""

from __future__ import annotations

import argparse
import sys

from trainer.launch.exit_codes import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; users asked for one line
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)
