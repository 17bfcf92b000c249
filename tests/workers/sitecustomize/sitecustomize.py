"""Put this folder on PYTHONPATH (with the repo root) to inject tests/workers/faults.py into the
training workers of a real launched run: only processes with RANK set and a FAULT_* variable."""

import os

if "RANK" in os.environ and (os.environ.get("FAULT_PAUSE") or os.environ.get("FAULT_NAN_STEPS")):
    from tests.workers import faults

    faults.install()
