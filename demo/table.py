"""A plain-text table printed one row at a time, so that each step shows as soon as it completes.

Cells wrap within their column; a wrapped row continues on the next lines with its number column
blank, as `ps` and `docker ps` do. Colour is for terminals only: piped into a file or a README, the
table is plain text.
"""

import dataclasses
import textwrap
from collections.abc import Sequence
from typing import TextIO

GAP = "  "
# Below this an outcome wraps onto so many lines that the table stops being readable.
MIN_FLEXIBLE_WIDTH = 30

BOLD, GREEN, RED, RESET = "\033[1m", "\033[32m", "\033[31m", "\033[0m"


@dataclasses.dataclass(frozen=True)
class Column:
    title: str
    width: int | None  # None: the one column that takes whatever width the others leave
    align_right: bool = False


class Table:
    def __init__(
        self, columns: Sequence[Column], *, width: int, out: TextIO, colour: bool = False, status_column: int
    ) -> None:
        flexible = [column for column in columns if column.width is None]
        if len(flexible) != 1:
            raise ValueError("exactly one column must take the remaining width")
        fixed = sum(column.width or 0 for column in columns) + len(GAP) * (len(columns) - 1)
        self.columns = tuple(columns)
        self.widths = tuple(
            column.width if column.width is not None else max(MIN_FLEXIBLE_WIDTH, width - fixed)
            for column in columns
        )
        self.out = out
        self.colour = colour
        self.status_column = status_column

    def header_lines(self) -> list[str]:
        titles = self._lines([column.title for column in self.columns])
        rule = GAP.join("-" * width for width in self.widths)
        return [self._paint(line, BOLD) for line in titles] + [rule]

    def row_lines(self, cells: Sequence[str], *, failed: bool = False) -> list[str]:
        """The row's lines; a failed row says FAILED in its status cell, in words, not only in red."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        cells = list(cells)
        if failed:
            cells[self.status_column] = f"FAILED: {cells[self.status_column]}"
        return self._lines(cells, highlight=RED if failed else GREEN)

    def print_header(self) -> None:
        self._print(self.header_lines())

    def print_row(self, cells: Sequence[str], *, failed: bool = False) -> None:
        self._print(self.row_lines(cells, failed=failed))

    def _lines(self, cells: Sequence[str], highlight: str | None = None) -> list[str]:
        wrapped = [_wrap(cell, width) for cell, width in zip(cells, self.widths, strict=True)]
        height = max(len(lines) for lines in wrapped)
        lines = []
        for index in range(height):
            parts = []
            for column, (cell_lines, width) in enumerate(zip(wrapped, self.widths, strict=True)):
                text = cell_lines[index] if index < len(cell_lines) else ""
                part = text.rjust(width) if self.columns[column].align_right else text.ljust(width)
                # Painted after padding: escape codes have no width on screen but do in len().
                if highlight is not None and column == self.status_column and text:
                    part = self._paint(part, highlight)
                parts.append(part)
            lines.append(GAP.join(parts).rstrip())
        return lines

    def _paint(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.colour else text

    def _print(self, lines: list[str]) -> None:
        # Flushed, so that a piped run (make, CI, tee) shows each step as it completes too.
        print("\n".join(lines), file=self.out, flush=True)


def _wrap(text: str, width: int) -> list[str]:
    # Hyphens do not break: ids such as demo-1a2b3c4d-approved stay whole, to be copied.
    return [
        line
        for paragraph in text.splitlines() or [""]
        for line in (textwrap.wrap(paragraph, width, break_on_hyphens=False) or [""])
    ]
