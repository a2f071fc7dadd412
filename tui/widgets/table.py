"""The one table the screens use: every cell and column label becomes a safe `Text` (tui/text.py), so a value
from a host or the bucket is never parsed as markup (a plain `str` cell of Textual's DataTable is)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from topdeck.tui.text import as_text


class SafeTable(DataTable[Any]):
    """A DataTable whose cells and column labels are never parsed as markup: each becomes `as_text(value)`."""

    @classmethod
    def with_columns(cls, columns: Sequence[tuple[str, str] | tuple[str, str, int | None]], *, id: str,
                     zebra_stripes: bool = False) -> SafeTable:
        """A row-cursor table with `columns`: (key, label) or (key, label, width)."""
        table = cls(id=id, cursor_type="row", zebra_stripes=zebra_stripes)
        for key, label, *width in columns:
            table.add_column(label, key=key, width=width[0] if width else None)
        return table

    def add_column(self, label: Any, *, width: int | None = None, key: str | None = None,
                   default: Any = None) -> ColumnKey:
        return super().add_column(as_text(label), width=width, key=key, default=default)

    def add_row(self, *cells: Any, height: int | None = 1, key: str | None = None,
                label: Any = None) -> RowKey:
        return super().add_row(*(as_text(cell) for cell in cells), height=height, key=key,
                               label=None if label is None else as_text(label))

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, as_text(value), update_width=update_width)

    def update_cell_at(self, coordinate: Coordinate, value: Any, *, update_width: bool = False) -> None:
        super().update_cell_at(coordinate, as_text(value), update_width=update_width)
