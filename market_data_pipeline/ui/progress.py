"""The one progress renderer: a live status line on stderr for every command that works for a
while (``produce``, ``replay``, ``run``, ``demo``, ``micro-batch``, ``infer``, ``bench``).

The line is a rich :class:`~rich.live.Live` display redrawn four times a second from the
counters the command keeps updating (:meth:`ProgressLine.update` only stores numbers, so a
producer may call it per event). Log records and anything else written to stderr while it is
live appear above it (``ConsoleLogHandler``; rich redirects ``sys.stderr``/``sys.stdout``).
When the work ends the line is erased, so a fast job leaves no stale line behind.

It is drawn only on an interactive terminal without ``-q``
(:func:`market_data_pipeline.ui.console.progress_allowed`). Elsewhere nothing is drawn, except
that a line given ``plain_every_s`` prints one plain line that often (a log file of
``mdp run`` shows how it went).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from market_data_pipeline.ui import console as _console

__all__ = ["ProgressLine", "format_duration_s"]

_REFRESH_PER_S = 4
_BAR_WIDTH = 20
_WIDE_TERMINAL = 110  # columns from which a bar is drawn beside the figures


def format_duration_s(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: elapsed or remaining time for a person."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLine:
    """``<spinner> <label>  [bar pct]  <count> <unit>  <rate>/s  <detail>  <elapsed> [ETA]``.

    ``total``: how many ``unit`` the work has (a bar, percent and ETA are shown); ``None``:
    open-ended. ``count``: called at each redraw for the count (instead of :meth:`update`).
    ``detail``: called at each redraw for the rest of the line. Both read the command's
    counters: they must be cheap and must not raise. ``rate``: show ``<unit>/s`` of the count.
    Use as a context manager; :meth:`update` only stores numbers (cheap; the redraw runs in
    rich's refresh thread and reads them).
    """

    def __init__(
        self,
        label: str,
        *,
        total: float | None = None,
        unit: str = "events",
        rate: bool = True,
        count: Callable[[], float] | None = None,
        detail: Callable[[], str] | None = None,
        plain_every_s: float | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.show_rate = rate
        self.detail = detail
        self.count = count
        self.detail_text = ""
        self.done = 0.0
        self.plain_every_s = plain_every_s
        self.started = time.monotonic()
        self._live: Live | None = None
        self._spinner = Spinner("dots", style="cyan")
        self._last_plain = self.started

    @property
    def live(self) -> bool:
        """Whether the line is being drawn."""
        return self._live is not None

    def __enter__(self) -> Self:
        self.started = self._last_plain = time.monotonic()
        if _console.progress_allowed():
            self._live = Live(
                self,
                console=_console.stderr(),
                refresh_per_second=_REFRESH_PER_S,
                transient=True,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Erase the line (idempotent)."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def update(
        self, done: float | None = None, *, total: float | None = None, detail: str | None = None
    ) -> None:
        """Record progress: ``done`` so far (a new ``total``, a new ``detail`` text when no
        ``detail`` callable was given). Without a terminal and with ``plain_every_s``, prints
        the line as plain text at most that often."""
        if done is not None:
            self.done = done
        if total is not None:
            self.total = total
        if detail is not None:
            self.detail_text = detail
        if self._live is None and self.plain_every_s is not None and not _console.settings().quiet:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every_s:
                self._last_plain = now
                _console.note(self.text())

    def _refresh(self) -> float:
        if self.count is not None:
            self.done = self.count()
        return time.monotonic() - self.started

    def _counts(self, elapsed: float) -> list[str]:
        parts = [f"{self.done:,.0f} {self.unit}"] if self.unit else []
        if self.show_rate and self.unit and elapsed > 0:
            parts.append(f"{self.done / elapsed:,.0f} {self.unit}/s")
        text = self.detail() if self.detail is not None else self.detail_text
        if text:
            parts.append(text)
        return parts

    def _eta(self, elapsed: float) -> str | None:
        if not self.total or self.done <= 0 or self.done >= self.total:
            return None
        return format_duration_s((self.total - self.done) * elapsed / self.done)

    def text(self) -> str:
        """The line as plain text (for logs and files)."""
        elapsed = self._refresh()
        parts = [f"[{format_duration_s(elapsed)}] {self.label}"]
        if self.total:
            parts.append(f"{min(100.0, 100.0 * self.done / self.total):.1f}%")
        parts += self._counts(elapsed)
        eta = self._eta(elapsed)
        if eta is not None:
            parts.append(f"ETA {eta}")
        return "  ".join(parts)

    def __rich__(self) -> RenderableType:
        elapsed = self._refresh()
        info = []
        if self.total:
            info.append(f"{min(100.0, 100.0 * self.done / self.total):5.1f}%")
        info += self._counts(elapsed)
        timing = format_duration_s(elapsed)
        eta = self._eta(elapsed)
        if eta is not None:
            timing += f"  ETA {eta}"
        info.append(timing)
        grid = Table.grid(padding=(0, 1))
        cells: list[RenderableType] = [self._spinner, Text(self.label, style="bold")]
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, min_width=len(self.label))
        if self.total and _console.stderr().width >= _WIDE_TERMINAL:
            grid.add_column(no_wrap=True, width=_BAR_WIDTH)
            cells.append(ProgressBar(total=self.total, completed=min(self.done, self.total)))
        # what does not fit is cut at the end, never wrapped onto a second line
        grid.add_column(no_wrap=True, overflow="ellipsis")
        cells.append(Text("  ".join(info)))
        grid.add_row(*cells)
        return grid
