"""The demo's table: columns line up, long cells wrap inside their column, a failure says so in words,
and colour is only ever added on top of the plain layout."""

import io
import re

import pytest

from demo.table import GAP, MIN_FLEXIBLE_WIDTH, Column, Table

COLUMNS = (
    Column("#", 2, align_right=True),
    Column("step", 12),
    Column("outcome", None),
    Column("ms", 4, align_right=True),
)
ESCAPE = re.compile(r"\033\[[0-9;]*m")


def table(width: int = 56, *, colour: bool = False) -> Table:
    return Table(COLUMNS, width=width, out=io.StringIO(), colour=colour, status_column=2)


def test_the_flexible_column_takes_the_width_the_others_leave() -> None:
    fixed = 2 + 12 + 4 + 3 * len(GAP)
    assert table(80).widths == (2, 12, 80 - fixed, 4)
    assert table(40).widths[2] == MIN_FLEXIBLE_WIDTH


def test_exactly_one_column_is_flexible() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Table([Column("a", 3), Column("b", 3)], width=40, out=io.StringIO(), status_column=0)


def test_header_and_rows_line_up_with_numbers_on_the_right() -> None:
    subject = table()
    lines = subject.header_lines() + subject.row_lines(["7", "Register", "201 Created", "123"])
    assert lines == [
        " #  step          outcome                             ms",
        "--  ------------  --------------------------------  ----",
        " 7  Register      201 Created                        123",
    ]


def test_a_long_cell_wraps_inside_its_column_and_the_row_goes_on_below() -> None:
    cells = ["12", "The saga decides", "REJECTED: insufficient_credit after all the waiting", "9"]
    assert table().row_lines(cells) == [
        "12  The saga      REJECTED: insufficient_credit        9",
        "    decides       after all the waiting",
    ]


def test_ids_with_hyphens_stay_whole() -> None:
    lines = table().row_lines(["1", "Story", "see demo-1a2b3c4d-approved-story", "1"])
    assert "demo-1a2b3c4d-approved-story" in "\n".join(lines)


def test_a_failed_row_says_failed_in_words() -> None:
    [line] = table().row_lines(["3", "Bob signs in", "401 Unauthorized", "5"], failed=True)
    assert "FAILED: 401 Unauthorized" in line


def test_a_row_needs_a_cell_for_each_column() -> None:
    with pytest.raises(ValueError, match="3 cells for 4 columns"):
        table().row_lines(["1", "two", "three"])


@pytest.mark.parametrize("failed", [False, True])
def test_colour_only_paints_the_plain_layout(failed: bool) -> None:
    cells = ["2", "The saga decides", "APPROVED: credit used 120.00 of 1000.00", "116"]
    plain, coloured = table(), table(colour=True)
    painted = coloured.header_lines() + coloured.row_lines(cells, failed=failed)
    assert any(ESCAPE.search(line) for line in painted)
    assert [ESCAPE.sub("", line).rstrip() for line in painted] == plain.header_lines() + plain.row_lines(
        cells, failed=failed
    )


def test_without_colour_there_is_no_escape_code() -> None:
    subject = table()
    lines = subject.header_lines() + subject.row_lines(["1", "x", "y", "2"], failed=True)
    assert not any("\033" in line for line in lines)


def test_each_row_is_printed_as_it_comes() -> None:
    out = io.StringIO()
    subject = Table(COLUMNS, width=56, out=out, status_column=2)
    subject.print_header()
    subject.print_row(["1", "a", "b", "2"])
    assert out.getvalue().splitlines() == [*subject.header_lines(), *subject.row_lines(["1", "a", "b", "2"])]
