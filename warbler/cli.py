"""The `warbler` command. Each subcommand imports its layer lazily, so `warbler chat` runs
without Ray installed and `warbler --help` is instant."""

from __future__ import annotations

from typing import Annotated

import typer

_OURS = {"warbler", "serve", "actors", "storage", "client", "loadtest"}

# Click's plain help: typer's rich panels (0.29) print every flag as taking a value
# ("--detach <bool>"), and no typer release on PyPI does otherwise.
app = typer.Typer(
    help="Warbler: an instant-messaging cluster on Ray.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},  # click's default of 80 cuts command summaries
)


def _register() -> None:
    # Subcommands live next to the layer they drive; each module exposes `register(app)`.
    from importlib import import_module

    for module in ("serve.launcher", "client.cli", "client.bot_cli", "loadtest.cli"):
        try:
            mod = import_module(module)
        except ImportError as exc:  # a layer not installed on this machine (e.g. client-only)
            # Skip a layer whose dependencies this machine lacks (e.g. a client-only install
            # without Ray); an error inside our own code still surfaces.
            if exc.name == module or (exc.name and exc.name.split(".")[0] not in _OURS):
                continue
            raise
        mod.register(app)


_register()


@app.command("status")
def status(
    watch: Annotated[
        float | None, typer.Option("--watch", help="Refresh every this many seconds.")
    ] = None,
    window: Annotated[
        float, typer.Option(help="Seconds between the two scrapes that give rates (one shot).")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object a refresh).")] = (
        False
    ),
) -> None:
    """Show the cluster: nodes, hosts, replicas, sockets, msgs/s, p99 ack, backlog, decisions."""
    import json
    import time

    from serve.launcher import join_running
    from warbler import status as st

    settings = join_running()

    import ray
    from rich.console import Console
    from rich.live import Live

    from actors.autoscale import controller_status

    console = Console()

    def read(before: st.Scrape | None) -> tuple[st.Scrape, st.ClusterStatus]:
        now = st.scrape(st.metrics_urls())
        nodes, hosts, replicas = st.read_actors(settings)
        auto = controller_status(settings)
        decisions = list(auto["history"]) if auto else []
        summary = st.summarize(
            now, before, nodes=nodes, hosts=hosts, replicas=replicas, decisions=decisions
        )
        return now, summary

    def show(summary: st.ClusterStatus) -> None:
        if as_json:
            typer.echo(json.dumps(summary.as_dict()))
        else:
            console.print(st.render(summary))

    try:
        first = st.scrape(st.metrics_urls())
        if watch is None:
            time.sleep(max(0.0, window))
            show(read(first)[1])
            return
        previous, summary = read(None)
        if as_json:
            while True:
                show(summary)
                time.sleep(watch)
                previous, summary = read(previous)
        with Live(st.render(summary), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(watch)
                previous, summary = read(previous)
                live.update(st.render(summary))
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()
