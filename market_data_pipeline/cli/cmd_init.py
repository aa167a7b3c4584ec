"""``mdp init [DIR]``: an editable project (configs, rules, a dataset registry, the example
model) copied from the defaults shipped with mdp, like ``dbt init``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from market_data_pipeline.cli.apps import app
from market_data_pipeline.project import init_project
from market_data_pipeline.ui.tables import print_fields

__all__ = ["init"]


@app.command("init")
def init(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="DIR", help="Project folder (created if missing).", show_default=False
        ),
    ] = Path("."),
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite the files mdp init writes if they exist."),
    ] = False,
) -> None:
    """Write an editable project into DIR (default: the working directory): configs/streaming.yaml,
    configs/rules.yaml, configs/datasets.yaml (a registry for your own files) and
    models/example_model.joblib, copied from the defaults shipped with mdp. Existing files are
    never overwritten without --force (exit 2, nothing written). Commands run in DIR read
    configs/streaming.yaml; relative paths in it resolve against its folder.

    Examples:

    \b
      mdp init my-pipeline
      mdp init . --force
    """
    written = init_project(folder, force=force)
    where = folder.absolute()
    typer.echo(f"mdp init: wrote {len(written)} files in {where}:")
    print_fields([(f.path, f.what) for f in written])
    go = "" if where == Path.cwd() else f"cd {folder} && "
    typer.echo(f"next: {go}mdp demo   (commands run there read configs/streaming.yaml)")
    typer.echo("      `mdp up` keeps its servers' data in .mdp/ there: not for version control")
