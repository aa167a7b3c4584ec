"""The one table renderer: column tables (``mdp stream status``, ``tail``, ``dlq list``, ``mdp up
--status``) and field lists (the summaries of ``mdp run``/``demo`` and ``mdp bench``).

Tables are rich tables without borders: columns two spaces apart, the header bold on a
terminal. On a terminal, long cells wrap inside their column to fit the screen; to a file or a
pipe every row stays one line (``grep``/``awk`` see whole rows) and trailing blanks are cut.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from market_data_pipeline.ui import console as _console

__all__ = ["print_fields", "print_table", "render_fields", "render_table"]

# Wide enough for any row we print; only used where nothing reads the width (files, pipes).
_UNBOUNDED_WIDTH = 100_000


def _grid() -> Table:
    return Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        collapse_padding=True,
        header_style="bold",
    )


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, show_header: bool = True
) -> Table:
    """A column table: ``header`` then ``rows`` (cells as text, one list per row)."""
    table = _grid()
    table.show_header = show_header
    for i, name in enumerate(header):
        last = i == len(header) - 1
        # every column but the last keeps its width; the last folds (ids stay whole)
        table.add_column(name, no_wrap=not last, overflow="fold" if last else "ellipsis")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def render_fields(rows: Sequence[tuple[str, str]], *, indent: int = 2) -> Table:
    """A field list: one ``name  value`` line per row, names aligned (and bold on a
    terminal), indented by ``indent`` spaces."""
    table = Table.grid(padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(Text(" " * indent + name), Text(value))
    return table


def _emit(renderable: RenderableType, console: Console) -> None:
    if console.is_terminal:
        console.print(renderable)
        return
    plain = Console(
        file=io.StringIO(),
        width=_UNBOUNDED_WIDTH,
        color_system=None,
        force_terminal=False,
        highlight=False,
        markup=False,
        emoji=False,
    )
    width = Measurement.get(plain, plain.options, renderable).maximum
    plain.print(renderable, width=max(1, width))
    text = plain.file.getvalue()  # type: ignore[attr-defined]
    console.file.write("".join(line.rstrip() + "\n" for line in text.splitlines()))
    console.file.flush()


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    show_header: bool = True,
    indent: int = 0,
    console: Console | None = None,
) -> None:
    """Print a column table on stdout (or ``console``), indented by ``indent`` spaces."""
    table: RenderableType = render_table(header, rows, show_header=show_header)
    if indent:
        table = Padding(table, (0, 0, 0, indent), expand=False)
    _emit(table, console or _console.stdout())


def print_fields(
    rows: Sequence[tuple[str, str]], *, indent: int = 2, console: Console | None = None
) -> None:
    """Print a field list on stdout (or ``console``)."""
    _emit(render_fields(rows, indent=indent), console or _console.stdout())
