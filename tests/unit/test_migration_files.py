from pathlib import Path

import pytest

from shared.db import migration_files

ROOT = Path(__file__).resolve().parents[2]


def test_files_are_applied_in_numeric_order(tmp_path: Path) -> None:
    for name in ("010_later.sql", "002_second.sql", "001_first.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    assert [version for version, _ in migration_files(tmp_path)] == [1, 2, 10]


@pytest.mark.parametrize("names", [["1_short.sql"], ["001_Upper.sql"], ["001_a.sql", "001_b.sql"]])
def test_misnamed_or_duplicated_migrations_are_refused(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(ValueError, match="is not named NNN_lower_snake.sql|two migrations share number"):
        migration_files(tmp_path)


def test_the_services_migrations_are_well_named() -> None:
    for service in ("users_service", "orders_service"):
        assert migration_files(ROOT / service / "migrations")
