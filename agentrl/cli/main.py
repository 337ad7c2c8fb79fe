"""`agentrl`: the console entry point. Command modules import heavy libraries inside their functions so that
`agentrl --help` stays fast."""

from __future__ import annotations

import typer

from agentrl.cli import config_cmd, info_cmd

app = typer.Typer(
    name="agentrl",
    help="Multi-turn agentic RL: environments, retrieval indexes, rollouts and training for search and "
    "tool-using LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("info")(info_cmd.info)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
