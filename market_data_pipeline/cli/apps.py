"""The Typer apps every command module attaches to (kept apart to avoid import cycles)."""

from __future__ import annotations

import typer

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

app = typer.Typer(
    name="mdp",
    help=(
        "mdp: a market-data streaming pipeline.\n\n"
        "Producers publish ticks, quotes and bars to Redis Streams (or Kafka); "
        "micro-batchers close exact event-time windows into PostgreSQL; "
        "features feed rules or a scikit-learn model.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  mdp demo --synthetic-s 10\n"
        "  mdp init my-pipeline\n"
        "  mdp stream produce --provider synthetic --rate 2000 --count 10000\n"
        "  mdp stream micro-batch --window 2s --drain\n"
        "  mdp stream tail --topic mdp.events --limit 20\n"
        "  mdp -v stream status\n\n"
        "Shell completion: mdp --install-completion (bash, zsh, fish, PowerShell), "
        "or mdp --show-completion to see the script."
    ),
    no_args_is_help=True,
    add_completion=True,
    context_settings=_SETTINGS,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
stream_app = typer.Typer(
    help="Produce, process, inspect and replay streams.",
    no_args_is_help=True,
    context_settings=_SETTINGS,
    rich_markup_mode=None,
)
dlq_app = typer.Typer(
    help="Inspect and re-drive the dead-letter stream (mdp.dlq).",
    no_args_is_help=True,
    context_settings=_SETTINGS,
    rich_markup_mode=None,
)
db_app = typer.Typer(
    help="Database schema migrations (Alembic).",
    no_args_is_help=True,
    context_settings=_SETTINGS,
    rich_markup_mode=None,
)
app.add_typer(stream_app, name="stream")
stream_app.add_typer(dlq_app, name="dlq")
app.add_typer(db_app, name="db")
