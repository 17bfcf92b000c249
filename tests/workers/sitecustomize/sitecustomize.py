"""Put this folder on PYTHONPATH (with the repo root) to inject tests/workers/faults.py into the
training workers of a real launched run: only processes with RANK set and a FAULT_* variable."""

import os

if "RANK" in os.environ and any(os.environ.get(k) for k in ("FAULT_PAUSE", "FAULT_NAN_STEPS", "FAULT_ENOSPC",
                                                   "FAULT_OVERFLOW_STEPS")):
    from tests.workers import faults

    faults.install()
