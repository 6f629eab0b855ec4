"""The README's "Where things are" map names exactly the packages and folders in the tree."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _map_entries() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Where things are\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Where things are' section"
    return re.findall(r"^- `([^`]+)`", section.group(1), re.M)


def test_every_named_package_or_folder_exists() -> None:
    entries = _map_entries()
    assert len(entries) >= 10, entries
    for entry in entries:
        path = REPO / entry
        assert path.is_dir(), f"README map names {entry}, which is not a folder of the repo"
        if entry.startswith("longqa/") or entry == "data_builders/":
            assert any(path.glob("*.py")), f"{entry} holds no Python module"


def test_every_package_of_longqa_is_on_the_map() -> None:
    entries = set(_map_entries())
    packages = {
        f"longqa/{p.name}/"
        for p in (REPO / "longqa").iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("*.py"))
    }
    assert packages, "no packages found under longqa/"
    assert packages <= entries, f"missing from the README map: {sorted(packages - entries)}"
    for folder in ("data_builders/", "recipes/", "tests/", "notebooks/", "benchmarks/"):
        assert folder in entries


def test_readme_is_a_short_front_door_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text
    docs = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", text))
    assert len(docs) >= 3, docs
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pages.append(REPO / "benchmarks" / "README.md")
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), (
                f"{page.relative_to(REPO)}: broken link {target}"
            )
