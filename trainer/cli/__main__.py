"""``python -m trainer.cli``: the same as the ``scaleout`` console script."""

import sys

from trainer.cli.dispatch import main

sys.exit(main())
