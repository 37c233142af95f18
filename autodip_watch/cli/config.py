"""``autodip-watch config check`` and ``config schema``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..settings.base import ConfigError
from ..settings.config import config_schema, load_config, resolve_state_dir, with_cli_folders
from .app import config_app, console, fail, json_flag, say, warn


@config_app.command("check")
def config_check(
    file: Path = typer.Argument(..., metavar="FILE", help="The TOML configuration to check."),
    watch: Optional[list[Path]] = typer.Option(
        None, "--watch", "-w", metavar="DIR",
        help="Folder to watch, as given to `run` (repeatable; added to the config's): check "
             "the combination the daemon will run."),
    as_json: bool = json_flag("Print the resolved configuration as JSON."),
) -> None:
    """Validate a configuration: every problem, with its location and how to fix it."""
    from ..settings.runtime import check_runtime

    try:
        settings = with_cli_folders(load_config(file), list(watch or []))
        warnings = check_runtime(settings)
    except ConfigError as error:
        fail(error)
    for warning in warnings:
        warn(warning)
    if as_json:
        typer.echo(json.dumps(settings.model_dump(mode="json", by_alias=True), indent=2))
        return
    console.print(f"[green]ok[/green]: {file}", highlight=False)
    for folder in settings.watch:
        target = settings.output_root_for(folder) or "beside the raw files"
        defaults = ", ".join(f"{k}={v}" for k, v in (("microscope", folder.microscope),
                                                     ("specimen", folder.specimen)) if v)
        say(f"  watch {folder.path} ({folder.observer_kind}, settle {folder.settle_seconds:g} s"
            f"{', ' + defaults if defaults else ''}) -> outputs {target}")
    say(f"  state directory: {resolve_state_dir(None, settings)}")
    if settings.executor == "dask":
        in_flight = settings.max_in_flight or "as many as the cluster has GPUs"
        say(f"  executor: dask, scheduler {settings.scheduler}, tasks in flight: {in_flight}")
    else:
        say(f"  devices: {', '.join(settings.devices)}")


@config_app.command("schema")
def config_schema_command() -> None:
    """Print the JSON Schema of the configuration file (for editors: completion and checks
    of every key, its type, default and range)."""
    typer.echo(json.dumps(config_schema(), indent=2))
