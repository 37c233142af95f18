#!/usr/bin/env bash
# Wheels of the dependencies that the lent GPU machine's python3 (3.12, x86-64) lacks,
# into .whl/ (ignored by git), for bench/gpu_session.sh to install there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#
# Which: every requirement of pyproject.toml and, recursively, of what it needs (read
# from this checkout's venv), that scripts/gpu-machine-packages.txt does not list; plus
# typing-extensions, which the machine has but pydantic needs new (>= 4.16). The
# versions are the ones this venv holds, so both machines run the same code. Binary
# wheels are manylinux x86-64 for CPython 3.12; a package published as source only
# (sdnotify) is built here into a pure-Python wheel. See bench/gpu-session.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
mapfile -t pins < <("$python" - scripts/gpu-machine-packages.txt <<'PY'
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

machine = {canonicalize_name(line.strip()) for line in open(sys.argv[1])
           if line.strip() and not line.startswith("#")}
# The machine's interpreter, for the environment markers of the requirements.
target = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython",
          "extra": ""}
always = ["typing-extensions"]  # on the machine, but pydantic needs a newer one
todo = [Requirement(text) for text in
        tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
todo += [Requirement(name) for name in always]
carried = {}
while todo:
    requirement = todo.pop()
    name = canonicalize_name(requirement.name)
    if name in carried or (name in machine and requirement.name not in always):
        continue
    carried[name] = metadata.version(name)  # fails loudly if the venv lacks it: setup.sh first
    for text in metadata.requires(name) or []:
        needed = Requirement(text)
        if needed.marker is None or needed.marker.evaluate(target):
            todo.append(needed)
for name, version in sorted(carried.items()):
    print(f"{name}=={version}")
PY
)
rm -rf .whl && mkdir .whl
for pin in "${pins[@]}"; do
    if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d .whl "$pin" 2>/dev/null; then
        # Published as source only: build it here; it must come out pure Python.
        "$python" -m pip wheel --quiet --no-deps --no-binary=:all: -w .whl "$pin"
    fi
done
for wheel in .whl/*.whl; do
    case $wheel in
        *-none-any.whl|*cp312*manylinux*x86_64*.whl|*abi3*manylinux*x86_64*.whl|*py3-none-manylinux*x86_64*.whl) ;;
        *) echo "not installable on the GPU machine (CPython 3.12, x86-64): $wheel" >&2; exit 1 ;;
    esac
done
ls .whl
du -sh .whl
