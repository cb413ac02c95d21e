"""The documentation points only at what exists: every relative link (and its #anchor) resolves, every
page in docs/ is reachable from the README, and every file or test a page names by its path is there.

A page that names a module or a test is a promise to the reader; when the code moves, these tests fail
until the page moves with it.
"""

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted(
    {
        README,
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("deploy/**/README.md"),
        ROOT / "tests" / "compose" / "README.md",
    }
)
# Inline links and images, [text](target) and ![alt](target); the target ends at the first space
# (a title may follow) or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s[^)]*)?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# A path a page names in a code span: it starts at a top-level folder of the repository.
TOP_FOLDERS = sorted(path.name for path in ROOT.iterdir() if path.is_dir() and not path.name.startswith("."))
NAMED_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(map(re.escape, TOP_FOLDERS))}|\.ci)/[\w./-]*\w)")
# `tests/unit/test_x.py::test_name`, or in a table of one folder's tests `test_x.py::test_name`, and
# after either more tests of the same file as `::test_other`; a name may hold a wildcard.
TEST_REFERENCE = re.compile(r"`((?:tests/[\w/]+/)?test_\w+\.py)?::([\w*]+)`")


def prose(page: Path) -> str:
    """The page without its fenced blocks: commands and outputs are not links or references."""
    return FENCE.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces to
    hyphens, and -1, -2, ... after a repeated one."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> Iterator[tuple[str, Path, str]]:
    """(link as written, the file it names, its anchor or "") for every link that stays in the repo."""
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        yield target, (page.parent / path).resolve() if path else page, anchor


def named_paths(page: Path) -> Iterator[str]:
    """Repository paths that the page's code spans name, without wildcards or placeholders."""
    for span in CODE_SPAN.findall(prose(page)):
        for found in NAMED_PATH.finditer(span):
            word = span[found.start() :].split(maxsplit=1)[0].partition("::")[0]
            if not re.search(r"[*<{]", word):  # a pattern (`flow.*`) or a placeholder (`<type>.json`)
                yield found.group(1)


def defines(source: Path | None, pattern: str) -> bool:
    """Whether `source` is a test file that defines a test whose name matches `pattern`."""
    if source is None:
        return False
    names = re.findall(r"^(?:async )?def (test_\w+)", source.read_text(), re.MULTILINE)
    return any(fnmatch.fnmatchcase(name, pattern) for name in names)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target, path, anchor in relative_links(page):
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_path_a_page_names_exists(page: Path) -> None:
    missing = sorted({path for path in named_paths(page) if not (ROOT / path).exists()})
    assert not missing, missing


def named_tests(page: Path) -> Iterator[tuple[str, Path | None, str]]:
    """(reference as written, the test file it means or None, the test's name or pattern)."""
    file: Path | None = None
    for written, name in TEST_REFERENCE.findall(prose(page)):
        if written:
            pattern = written if written.startswith("tests/") else f"tests/**/{written}"
            found = [path for path in ROOT.glob(pattern) if path.is_file()]
            file = found[0] if len(found) == 1 else None
        yield f"{written}::{name}", file, name


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_test_a_page_names_exists(page: Path) -> None:
    missing = [written for written, file, name in named_tests(page) if not defines(file, name)]
    assert not missing, missing


def test_the_readme_links_every_page_in_docs() -> None:
    linked = {path for _, path, _ in relative_links(README)}
    unlinked = [page_id(page) for page in sorted(ROOT.glob("docs/*.md")) if page.resolve() not in linked]
    assert not unlinked, unlinked


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """Each check finds a broken link, a missing anchor, a missing path and a missing test."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# A heading: with punctuation\n## Twice\n## Twice\n")
    page.write_text(
        "[ok](other.md#a-heading-with-punctuation) [ok](other.md#twice-1) [web](https://example.com)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere)\n"
        "`shared/config.py` and `shared/no_such_module.py`, `shared/contracts/events/<type>.json`\n"
        "`tests/unit/test_config.py::test_config_is_immutable`, `tests/unit/test_config.py::test_nothing_*`\n"
        "```\n[inside a fence](not-checked.md)\n```\n"
    )
    links = {target: (path.exists(), anchor) for target, path, anchor in relative_links(page)}
    assert links == {
        "other.md#a-heading-with-punctuation": (True, "a-heading-with-punctuation"),
        "other.md#twice-1": (True, "twice-1"),
        "missing.md": (False, ""),
        "other.md#nowhere": (True, "nowhere"),
    }
    assert anchors(tmp_path / "other.md") == {"a-heading-with-punctuation", "twice", "twice-1"}
    assert list(named_paths(page)) == [
        "shared/config.py",
        "shared/no_such_module.py",
        "tests/unit/test_config.py",
        "tests/unit/test_config.py",
    ]
    assert [defines(file, name) for _, file, name in named_tests(page)] == [True, False]
    table = tmp_path / "table.md"
    table.write_text("| `test_config.py::test_config_is_*` | `::test_no_such` | `test_none.py::test_x` |\n")
    assert [defines(file, name) for _, file, name in named_tests(table)] == [True, False, False]
