"""`agentrl config show`: print a resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrl.cli.errors import user_errors

app = typer.Typer(help="Inspect experiment configs (YAML files in configs/).", no_args_is_help=True)


@app.command("show")
def show(
    config: Annotated[Path, typer.Argument(help="YAML config file, e.g. configs/quickstart.yaml.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Overrides as key.sub=value, applied after the file, e.g. rollout.group_size=8."),
    ] = None,
) -> None:
    """Print CONFIG with OVERRIDES applied and every default filled in, as YAML.

    Unknown keys, wrong types and missing required values are reported with the closest valid key.
    """
    from agentrl.core.config import ConfigError, dump_config, load_config
    from agentrl.experiment import ExperimentConfig

    with user_errors(ConfigError):
        cfg = load_config(ExperimentConfig, config, overrides or [])
    typer.echo(dump_config(cfg), nl=False)
