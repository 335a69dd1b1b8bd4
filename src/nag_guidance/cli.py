"""The `nag` command line."""

from __future__ import annotations

import typer

from nag_guidance import __version__

app = typer.Typer(help="Normalized Attention Guidance (NAG) for diffusers pipelines.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """Normalized Attention Guidance (NAG) for diffusers pipelines."""


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


def main() -> None:
    app()
