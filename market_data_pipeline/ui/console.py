"""The terminal: one stdout console for results (tables), one stderr console for everything a
person watches (log lines, progress, notes), and the verbosity the command line chose.

Both are `rich <https://rich.readthedocs.io>`_ consoles. Colour and bold are used only on a
terminal and never when ``NO_COLOR`` is set to a non-empty value (https://no-color.org);
``FORCE_COLOR``, ``TTY_COMPATIBLE`` and ``TTY_INTERACTIVE`` work as rich documents them.
Output to a file or a pipe is plain text without escape codes, and tables are not wrapped to a
screen width there.

Log records go through :class:`ConsoleLogHandler`, which prints them with the stderr console:
while a progress line is live (:mod:`market_data_pipeline.ui.progress`) they appear above it,
never inside it.

:func:`configure` is called once per command by the CLI (``mdp -q|-v|--log-level``); a library
user who never calls it gets the defaults (the config's ``telemetry.log_level``, colour on a
terminal).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from rich.console import Console
from rich.text import Text

__all__ = [
    "LOG_LEVELS",
    "ConsoleLogHandler",
    "OutputSettings",
    "configure",
    "log_level",
    "note",
    "progress_allowed",
    "settings",
    "stderr",
    "stdout",
    "tame_libraries",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_LEVEL_STYLES: Final[Mapping[str, str]] = {
    "DEBUG": "dim",
    "INFO": "cyan",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold red",
}


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """What the command line chose. ``log_level``: ``None`` keeps ``telemetry.log_level``;
    ``quiet`` (``-q``) also hides progress lines and notes; ``verbose`` (``-v``): mdp's own
    debug logs, the libraries' at INFO; ``no_color``: ``NO_COLOR`` was set."""

    log_level: LogLevel | None = None
    quiet: bool = False
    verbose: bool = False
    no_color: bool = False


_settings = OutputSettings()
_stdout: Console | None = None
_stderr: Console | None = None


def _console(*, err: bool) -> Console:
    # file=None: rich writes to whatever sys.stdout/sys.stderr is at the time of writing
    # (a test's capture, or the proxy of a live progress line)
    # NO_COLOR: no escape codes for style at all (bold included), as a plain terminal shows
    return Console(
        stderr=err,
        highlight=False,
        markup=False,
        emoji=False,
        color_system=None if _settings.no_color else "auto",
        no_color=True if _settings.no_color else None,
    )


def configure(
    settings: OutputSettings, *, stdout: Console | None = None, stderr: Console | None = None
) -> None:
    """Apply the command line's choices; the consoles are made afresh (a test calling
    ``main`` twice gets a clean state each time), or are the ones given (a notebook's, a
    test's recording console)."""
    global _settings, _stdout, _stderr
    _settings = settings
    _stdout = stdout or _console(err=False)
    _stderr = stderr or _console(err=True)


def settings() -> OutputSettings:
    return _settings


def stdout() -> Console:
    """The console for results (tables, summaries)."""
    global _stdout
    if _stdout is None:
        _stdout = _console(err=False)
    return _stdout


def stderr() -> Console:
    """The console for log lines, progress and notes."""
    global _stderr
    if _stderr is None:
        _stderr = _console(err=True)
    return _stderr


def log_level(configured: str) -> str:
    """The level logging runs at: the command line's choice, else ``configured``
    (``telemetry.log_level``)."""
    return _settings.log_level or configured


# Libraries whose DEBUG lines are about their own internals (selectors, handshakes, pools).
_LIBRARIES: Final = ("asyncio", "redis", "aiokafka", "asyncpg", "sqlalchemy", "websockets")


def tame_libraries() -> None:
    """With ``-v``, keep the libraries' loggers at INFO (mdp's own go to DEBUG);
    ``--log-level DEBUG`` leaves them alone."""
    if _settings.verbose:
        for name in _LIBRARIES:
            logging.getLogger(name).setLevel(logging.INFO)


def progress_allowed() -> bool:
    """Whether a live progress line may be drawn: stderr is an interactive terminal (not a
    pipe, not ``TERM=dumb``) and ``-q`` was not given."""
    console = stderr()
    return console.is_interactive and not _settings.quiet


def note(message: str, *, style: str | None = None) -> None:
    """One line for a person on stderr (never wrapped, above any progress line); ``-q``
    silences it."""
    if not _settings.quiet:
        stderr().print(Text(message, style=style or ""), soft_wrap=True)


class ConsoleLogHandler(logging.Handler):
    """Prints log records with the stderr console: above a live progress line, one record per
    line (never wrapped: JSON lines stay parseable), the level coloured on a terminal.

    With the text format the line reads ``<asctime> <LEVEL> <logger> <message>`` like
    :class:`logging.Formatter`'s ``"%(asctime)s %(levelname)s %(name)s %(message)s"``; any
    other formatter (JSON) is printed as it formats."""

    def __init__(self, formatter: logging.Formatter, *, text: bool) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._text = text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self._text:
                prefix = f"{self.formatter.formatTime(record) if self.formatter else ''} "
                rendered = Text(line)
                start = len(prefix)
                if line.startswith(prefix):
                    rendered.stylize("dim", 0, start - 1)
                    rendered.stylize(
                        _LEVEL_STYLES.get(record.levelname, ""),
                        start,
                        start + len(record.levelname),
                    )
            else:
                rendered = Text(line)
            stderr().print(rendered, soft_wrap=True)
        except Exception:  # a failing handler must never take the command down
            self.handleError(record)
