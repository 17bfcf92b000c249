"""The ``scaleout`` command line (the top layer: nothing imports it). ``main`` dispatches to one
module per command; ``preflight`` holds the checks ``scaleout train`` runs before any worker starts."""

from trainer.cli.dispatch import main

__all__ = ["main"]
