"""`agentrl`: the console entry point. Command modules import heavy libraries inside their functions so that
`agentrl --help` stays fast."""

from __future__ import annotations

import typer

from agentrl.cli import config_cmd, data_cmd, eval_cmd, index_cmd, info_cmd, rollout_cmd, serve_cmd, train_cmd

app = typer.Typer(
    name="agentrl",
    help="Multi-turn agentic RL: environments, retrieval indexes, rollouts and training for search and "
    "tool-using LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("info")(info_cmd.info)
app.command("quickstart")(train_cmd.quickstart)
app.command("train")(train_cmd.train_command)
app.command("sft")(train_cmd.sft_command)
app.command("rollout")(rollout_cmd.rollout)
app.command("eval")(eval_cmd.eval_command)
app.add_typer(config_cmd.app, name="config")
app.add_typer(index_cmd.app, name="index")
app.add_typer(data_cmd.app, name="data")
app.command("serve-retriever")(serve_cmd.serve_retriever)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
