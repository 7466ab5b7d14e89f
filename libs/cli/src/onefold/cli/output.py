"""How every command prints: tables, JSON and one-sentence errors.

On a terminal a table is drawn by rich and long cells fold onto further lines rather than being cut,
so an id is always whole. When stdout is not a terminal (a pipe, a file, a test) the same table is
written as tab-separated lines, header first, without markup: whole ids that `cut`, `awk` and
spreadsheets read. `--json` output is one indented JSON document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A failure to report as one sentence (exit code 2 unless given)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")


def plain(cell: str) -> str:
    """A cell without its rich markup (a `[green]SERVING[/green]` status reads SERVING)."""
    return Text.from_markup(cell).plain


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str = "",
    markup: bool = False,
) -> None:
    """A table: rich on a terminal, tab-separated lines otherwise (see the module docstring).

    Cells and title are plain text unless `markup` is set; then they may carry rich markup (colours)
    and any data in them must already be escaped with `escape`."""
    rows = list(rows)
    if not sys.stdout.isatty():
        if title:
            sys.stdout.write(f"# {plain(title) if markup else title}\n")
        lines = ["\t".join(columns)]
        for row in rows:
            cells = [plain(cell) if markup else cell for cell in row]
            lines.append("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in cells))
        sys.stdout.write("\n".join(lines) + "\n")
        return
    from rich.table import Table

    table = Table(title=(title if markup else escape(title)) or None, show_header=True, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell if markup else escape(cell) for cell in row))
    console.print(table)
