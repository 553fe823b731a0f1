"""The `kerabl` command line: one command per pipeline stage, options named as the library's
keyword arguments. Each command is a thin wrapper: parse, call the library, print where results went.
Bad input raises `KerablError`, printed as one line with exit status 2."""

from __future__ import annotations

import sys

import typer

from kerabl.errors import KerablError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Unit-ablation studies of image CNNs (Hayne et al. 2022; Zhou et al. 2018).\n\n"
         "Stages: activations -> grid -> probe -> ablate (H study); units (Z study); "
         "figures, export, merge; reproduce chains them; bench measures speed.")


def _todo(stage: str) -> None:
    typer.echo(f"kerabl {stage}: not implemented yet")
    raise typer.Exit(1)


@app.command()
def reproduce() -> None:
    """Run the whole study (demo model by default) and write results and figures."""
    _todo("reproduce")


def main() -> None:
    """Entry point of the `kerabl` console script: KerablError becomes one line and exit 2."""
    try:
        app(standalone_mode=False)
    except KerablError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except Exception as err:  # click's usage errors
        import click
        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
