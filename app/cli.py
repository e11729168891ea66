"""The ``dr4sr`` command line.

Commands live in :mod:`app.commands`: each module there defines
``register(app: typer.Typer)`` and is discovered here, so the areas of the
project add their commands without editing one shared file.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import app.commands

cli = typer.Typer(
    name="dr4sr",
    help="DR4SR / DR4SR+ dataset regeneration for sequential recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@cli.callback()
def _root() -> None:
    """DR4SR / DR4SR+ dataset regeneration for sequential recommendation."""


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(app.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"app.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(cli)


_register_all()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
