#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on CPU.
# Two pytest workers (pytest-xdist), one per core of a CI machine; each test file runs
# on one worker, in file order (--dist loadfile), because some files share one daemon
# between their tests. PYTEST_WORKERS=0 runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
