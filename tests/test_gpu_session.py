"""The GPU session of bench/gpu-session.md: every CUDA test is selected, the script parses,
and the documented device calls fit the device tool's limits (issue 17).

A lent GPU machine runs one prepared command (bench/gpu_session.sh); a mistake found
there costs device time that a session cannot get back, so what can be checked here is.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION_DOC = ROOT / "bench" / "gpu-session.md"
SCRIPT = ROOT / "bench" / "gpu_session.sh"

#: The device tool's limits (its README): command characters, carried paths, seconds.
MAX_COMMAND = 2000
MAX_CARRY = 8
MAX_TIMEOUT = 600


def _skipif_on_cuda(node: ast.AST) -> bool:
    """A decorator or assignment that skips by ``torch.cuda.is_available()`` itself."""
    text = ast.unparse(node)
    return "skipif" in text and "cuda.is_available" in text


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_cuda_tests_use_the_cuda_marker(path):
    """gpu_session.sh selects the CUDA tests with ``-m cuda``: a test that skips by its own
    ``skipif(not torch.cuda.is_available())`` would never run on the GPU machine."""
    tree = ast.parse(path.read_text())
    own = [node.lineno for node in ast.walk(tree)
           if isinstance(node, (ast.Call, ast.Assign)) and _skipif_on_cuda(node)]
    assert not own, f"{path.name} lines {own}: mark CUDA tests with @pytest.mark.cuda"


def test_the_session_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _documented_calls() -> list[dict]:
    """The ```json blocks of gpu-session.md: the device `run` calls, as documented."""
    return [json.loads(block) for block in
            re.findall(r"```json\n(.*?)```", SESSION_DOC.read_text(), re.S)]


def test_documented_device_calls_fit_the_device_tool():
    calls = _documented_calls()
    assert calls, "gpu-session.md documents its run calls in ```json blocks"
    for call in calls:
        assert len(call["command"]) <= MAX_COMMAND
        assert len(call["carry"]) <= MAX_CARRY
        assert call["timeout_s"] <= MAX_TIMEOUT
        # the script ends itself (its --budget) before the tool's limit kills it unpacked
        budget = re.search(r"--budget (\d+)", call["command"])
        default = re.search(r"budget=\$\{GPU_SESSION_BUDGET:-(\d+)\}", SCRIPT.read_text())
        seconds = int(budget.group(1) if budget else default.group(1))
        assert seconds + 30 <= call["timeout_s"], call["command"]
        assert "bench/gpu_session.sh" in call["command"]


def test_documented_reruns_name_steps_of_the_script():
    steps = set(re.findall(r"^step ([a-z-]+) \d+", SCRIPT.read_text(), re.M))
    assert {"env", "tests", "speed-baseline"} <= steps
    for call in _documented_calls():
        only = re.search(r"--only ([a-z,-]+)", call["command"])
        if only:
            assert set(only.group(1).split(",")) <= steps, only.group(1)
