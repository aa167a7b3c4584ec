"""The ``mdp`` command line (Typer)."""
