"""The `warbler` command. Each subcommand imports its layer lazily, so `warbler chat` runs
without Ray installed and `warbler --help` is instant."""

from __future__ import annotations

import typer

_OURS = {"warbler", "serve", "actors", "storage", "client", "loadtest"}

app = typer.Typer(help="Warbler: an instant-messaging cluster on Ray.", no_args_is_help=True)


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
