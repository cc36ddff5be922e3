"""`warbler bench <scenario> [options]`: the end-to-end benchmarks (see loadtest.bench)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `bench` command to the `warbler` CLI."""

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        # --help goes to the bench's own parser, which knows every option.
        add_help_option=False,
        help="Run a benchmark scenario (direct, group, connections, sync, recovery, chatai, all) "
        "against Warbler and the baseline relay; `warbler bench x --help` lists the options.",
    )
    def bench(ctx: typer.Context, scenario: str = typer.Argument(..., help="the scenario")) -> None:
        # Imported here: `warbler --help` stays instant.
        if scenario == "chatai":  # its own runner: loadtest/chatai.py
            from loadtest.chatai import main as chatai_main

            raise typer.Exit(chatai_main(ctx.args))
        from loadtest.bench import main

        raise typer.Exit(main([scenario, *ctx.args]))
