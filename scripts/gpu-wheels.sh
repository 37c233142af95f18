#!/usr/bin/env bash
# Wheels of the pipeline's dependencies that the lent GPU machine's python3 lacks
# (it has torch, numpy, tifffile, scikit-image, typer, lxml, pillow; not ome-types and
# its pydantic stack, structlog, defusedxml, watchdog, lpips, tomli-w), for Python 3.12
# on x86-64, into .whl/ (ignored by git). The versions are the ones this checkout's
# venv holds, so both machines run the same code. Carry .whl and install there with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# See bench/gpu-session.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
names="ome-types pydantic pydantic-core pydantic-extra-types xsdata annotated-types
       typing-inspection typing-extensions structlog defusedxml watchdog lpips tomli-w"
pins=()
for name in $names; do
    version=$("$python" -m pip show "$name" | awk '/^Version:/ {print $2}')
    pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
