#!/usr/bin/env bash
# Set up, drop a generated sample into ./autodip-local/incoming, and run the daemon on
# that folder in the foreground, with the embedded defaults: SQLite state in
# ./autodip-local/state, the local worker on the best device, the shipped calibration.
# Watch it from another terminal:  .venv/bin/autodip-watch status --state-dir autodip-local/state
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p autodip-local/incoming autodip-local/state
if [ ! -e autodip-local/incoming/sample-dapi.ome.tif ]; then
    .venv/bin/python scripts/make_sample.py autodip-local/incoming/sample-dapi.ome.tif
fi
exec .venv/bin/autodip-watch run --watch autodip-local/incoming --state-dir autodip-local/state "$@"
