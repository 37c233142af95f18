"""The typer app, and what its commands share: the console, errors, common options.

Commands are thin: they turn options into settings (``settings/``), make one library
call, and print what it returns (``denoise.py``, ``inspect.py``, ``calibrate.py``,
``daemon.py``, ``config.py``). Help and messages are plain text: no rich markup is
interpreted, so TOML in them (``[[watch]]``, ``[dip]``) is shown as written. Commands
import the engine (torch) only when they run it, so that ``status``, ``inspect``,
``groups``, ``queue`` and ``config check`` start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperArgument, TyperCommand
from rich.console import Console
from rich.markup import escape

from .. import __version__, defaults
from ..settings.base import ConfigError, Settings
from ..transfer.table import CalibrationTable, TableError

class _Command(TyperCommand):
    """A command whose help names each argument by its metavar only: typer would add
    the Python type (``FILE <path>``, ``FILE... <list[Path]>``), which says nothing to
    a person at a terminal."""

    def format_options(self, ctx, formatter) -> None:
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx: None  # this instance only
        super().format_options(ctx, formatter)


class _Typer(typer.Typer):
    """The app's Typer: every command is a :class:`_Command`, help is plain text."""

    def __init__(self, **options) -> None:
        super().__init__(rich_markup_mode=None, **options)

    def command(self, *args, **options):
        options.setdefault("cls", _Command)
        return super().command(*args, **options)


app = _Typer(add_completion=False, no_args_is_help=True,
             help="Denoise fluorescence microscopy images with AUTO-DIP.")
queue_app = _Typer(no_args_is_help=True, help="List, retry and forget the daemon's jobs.")
config_app = _Typer(no_args_is_help=True,
                    help="Check a daemon configuration file, or print its schema.")
app.add_typer(queue_app, name="queue")
app.add_typer(config_app, name="config")
#: Messages and progress (stderr); results go to stdout. Never hard-wrapped: a message
#: with a long path stays one line, whole for grep and for the log it ends up in.
console = Console(stderr=True, soft_wrap=True)

#: ``--config``, shared by the daemon's commands (and read from $AUTODIP_WATCH_CONFIG).
CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar=defaults.CONFIG_ENV, metavar="FILE",
                             help="Daemon configuration (TOML); see "
                                  "systemd/autodip-watch.example.toml.")
#: ``--state-dir``, shared by the daemon's commands.
STATE_OPTION = typer.Option(None, "--state-dir", metavar="DIR",
                            help="State directory holding the queue database (default: the "
                                 "config's state_dir, else $STATE_DIRECTORY, else the XDG "
                                 "state directory).")


def json_flag(help: str = "Print JSON on stdout.") -> Any:
    """``--json``: a flag, the same on every command."""
    return typer.Option(False, "--json", help=help)


def say(message: str) -> None:
    """A plain line on stderr, printed as written (no markup)."""
    console.print(escape(message), highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad usage)."""
    console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False)
    raise typer.Exit(code)


def settings_from(model: type[Settings], options: dict[str, object]):
    """``model`` from the command line's ``options`` (option name -> value; None: not
    given, so the model's default), or exit 2 listing every problem by its option."""
    values = {name: value for name, value in options.items() if value is not None}
    try:
        return model.parse(values, source="command line")
    except ConfigError as error:
        fail(ConfigError([_as_option(problem) for problem in error.problems], "command line"))


def _as_option(problem: str) -> str:
    """``max_batch: must be ...`` -> ``--max-batch: must be ...``."""
    key, colon, rest = problem.partition(":")
    if not colon or " " in key:
        return problem
    return f"--{key.replace('_', '-')}{colon}{rest}"


def load_table(path: Optional[Path]) -> CalibrationTable:
    """The calibration table ``--table`` names (default: the shipped one), or exit 2."""
    try:
        return CalibrationTable.load(path)
    except TableError as error:
        fail(error)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autodip-watch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """AUTO-DIP denoising daemon and tools."""
