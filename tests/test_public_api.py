"""What a script may use (``autodip_watch.__all__``), documented as scikit-image documents
its functions; the settings model's JSON Schema; the command line's help and messages.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import autodip_watch
from autodip_watch.cli.app import app
from autodip_watch.settings.config import Config, config_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "systemd" / "autodip-watch.example.toml"
runner = CliRunner()


def public_objects():
    return [(name, getattr(autodip_watch, name)) for name in autodip_watch.__all__
            if name != "__version__"]


def test_every_public_name_resolves_and_import_stays_light():
    assert {"denoise_file", "inspect_file", "DenoiseSettings", "Config",
            "CalibrationTable", "calibrate"} <= set(autodip_watch.__all__)
    for name, value in public_objects():
        assert value is not None, name
    # importing the package (what every light command does) must not load torch
    code = "import sys, autodip_watch; autodip_watch.Config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name, value", public_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_public_objects_are_documented(name, value):
    doc = inspect.getdoc(value) or ""
    # a dataclass without a docstring gets "Name(field: type, ...)": not documentation
    assert doc and not doc.startswith(f"{name}("), name
    if inspect.isfunction(value):
        parameters = [p for p in inspect.signature(value).parameters if p != "self"]
        if parameters:
            assert re.search(r"^Parameters\n-+$", doc, re.M), f"{name}: no Parameters section"
        assert re.search(r"^Returns\n-+$", doc, re.M), f"{name}: no Returns section"


def test_the_schema_validates_the_example_configuration_and_refuses_mistakes():
    jsonschema = pytest.importorskip("jsonschema")
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert list(validator.iter_errors(example)) == []
    Config.parse(example, base=EXAMPLE.parent)  # and the model itself agrees
    # the schema is not a blank cheque: the kinds of mistake the model refuses
    mistakes = [
        {"watch": [{"path": "/data", "settle_secnds": 3}]},  # unknown key
        {"watch": [{"path": "/data", "recursive": "yes"}]},  # not a boolean
        {"dip": {"iterations": "300"}},  # not a number
        {"log_level": "loud"},  # not a choice
        {"retry": {"max_attempts": 0}},  # out of range
        {"metrics": {"port": 70000}},
    ]
    for document in mistakes:
        assert list(validator.iter_errors(document)), document


def test_config_schema_command_prints_the_schema():
    result = runner.invoke(app, ["config", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(json.dumps(config_schema()))


# typer's own labels of Python types, which say nothing to a person at a terminal
TYPE_PLACEHOLDER = re.compile(r"<(bool|str|text|int|integer|float|path|file|dir|"
                              r"list\[[^>]*\]|[a-z]+ range)>", re.I)


def _commands(group, prefix=()):
    import typer

    click_group = typer.main.get_command(group)
    stack = [(click_group, list(prefix))]
    while stack:
        command, path = stack.pop()
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            stack.append((sub, path + [name]))


def test_help_has_no_type_placeholders():
    checked = 0
    for path in _commands(app):
        result = runner.invoke(app, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert not TYPE_PLACEHOLDER.search(result.output), (path, result.output)
        checked += 1
    assert checked >= 10  # every command and group was seen


def test_the_placeholder_check_can_fail():
    for text in ("FILE <path>", "FILE... <list[Path]>", "--flag <bool>", "N <integer range>"):
        assert TYPE_PLACEHOLDER.search(text), text
    assert not TYPE_PLACEHOLDER.search("as <stem>.images.tif")


@pytest.mark.parametrize("document, shown", [
    ("", "[[watch]]"),  # no folder to watch: "add a [[watch]] table"
    ("dip = 3\n[[watch]]\npath = '.'\n", "[dip]"),  # a table written as a value
    ("[[watch]]\npath = 'a'\noutput_root = 'out'\n[[watch]]\npath = 'b'\n"
     "output_root = 'out'\n", "[[watch]]"),  # "give each [[watch]] its own output_root"
], ids=["no-watch", "dip-not-a-table", "shared-output-root"])
def test_messages_with_toml_tables_survive_the_terminal(tmp_path, document, shown):
    """Messages that name TOML tables reach the user as written; rich markup would eat
    ``[dip]`` and turn ``[[watch]]`` into ``[]``."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    config = tmp_path / "config.toml"
    config.write_text(document, encoding="utf-8")
    result = runner.invoke(app, ["config", "check", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert shown in result.output, result.output


def test_json_is_a_flag_on_every_command_that_has_it():
    for path in _commands(app):
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        line = next((l for l in result.output.splitlines() if "--json" in l), None)
        if line is None:
            continue
        # a flag: no value after it, no --no-json twin
        assert re.search(r"--json\s{2,}", line) and "--no-json" not in line, (path, line)
