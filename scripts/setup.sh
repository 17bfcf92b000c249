#!/usr/bin/env bash
# Create or reuse .venv and install scaleout with the tested stack (constraints.txt).
# Needs only Python 3.11; torch goes in first so deepspeed's build cannot pull another torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.scaleout-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade "pip>=24" "setuptools>=77" wheel
  .venv/bin/python -m pip install -q -c constraints.txt torch
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  # olah, the local Hub the download tests run against (tests/olah_hub.py), needs fastapi-utils, whose every
  # release caps psutil < 6 for a module olah never imports (fastapi_utils.timing), and the pinned psutil is 7:
  # those two go in without their declared dependencies, olah's other dependencies as usual, all pinned.
  .venv/bin/python -m pip install -q -c constraints.txt --no-deps olah fastapi-utils
  .venv/bin/python -m pip install -q -c constraints.txt fastapi pydantic-settings toml shortuuid uvicorn tenacity \
    pytz GitPython typing-inspect python-multipart portalocker peewee brotli
  echo "$want" > "$stamp"
fi
# DeepSpeed compiles its CPU shared-memory comm op with g++ (~40 s) in the first process that starts
# deepspeed.comm, and keeps it in torch's extension cache (TORCH_EXTENSIONS_DIR, default
# ~/.cache/torch_extensions): build it here, once per machine, not inside the first run or test.
.venv/bin/python - <<'PY'
from deepspeed.accelerator import get_accelerator

builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
PY
