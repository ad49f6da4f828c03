"""The migration guides agree with the shim manifests: tables, links and listed methods."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from capa_compat.migrate.guides import END, START, guide_path, support_table
from capa_compat.migrate.rules import read_manifest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "shims").glob("*.toml"))
GUIDES = ROOT / "migration_guides"
INDEX = GUIDES / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def manifest_of(path: Path) -> dict[str, Any]:
    return read_manifest(path)


def guide_of(path: Path) -> Path:
    return guide_path(manifest_of(path), ROOT)


def test_there_are_manifests() -> None:
    assert MANIFESTS, "no shims/*.toml found"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_guide_exists_with_one_pair_of_markers(path: Path) -> None:
    guide = guide_of(path)
    assert guide.is_file(), f"{path.name} names the guide {guide}, which does not exist"
    text = guide.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, (
        f"{guide}: put {START} and {END} once each where the support table goes"
    )
    assert text.index(START) < text.index(END)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_support_table_matches_the_manifest(path: Path) -> None:
    guide = guide_of(path)
    text = guide.read_text(encoding="utf-8")
    table = text[text.index(START): text.index(END) + len(END)]
    assert table == support_table(manifest_of(path)), (
        f"{guide}: the support table differs from {path.name}; run "
        "`python -m capa_compat.migrate.guides .` to render it again"
    )


def linked_targets(document: Path) -> set[Path]:
    """The local files a Markdown document links to (anchors and URLs left out)."""
    targets = set()
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        targets.add((document.parent / target.split("#", 1)[0]).resolve())
    return targets


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_index_links_every_guide(path: Path) -> None:
    assert guide_of(path).resolve() in linked_targets(INDEX), (
        f"{INDEX} does not link {guide_of(path)}"
    )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_index_row_names_the_library_and_its_versions(path: Path) -> None:
    manifest = manifest_of(path)
    rows = [
        line for line in INDEX.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{manifest['library']}` |")
    ]
    assert len(rows) == 1, f"{INDEX}: one table row for `{manifest['library']}`"
    assert f"`{manifest['versions']}`" in rows[0], (
        f"{INDEX}: the row of {manifest['library']} must give the versions "
        f"{manifest['versions']!r} of {path.name}"
    )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_guide_names_every_method_the_shim_lacks(path: Path) -> None:
    # The tables do not render `not_provided`; the guide's prose must keep up with the list.
    text = guide_of(path).read_text(encoding="utf-8")
    for setting in manifest_of(path).get("settings", []):
        missing = [n for n in setting.get("not_provided", []) if f"`{n}`" not in text]
        assert not missing, (
            f"{guide_of(path)}: say that {setting['old']}'s methods {missing} are not provided"
        )


def test_every_local_link_of_the_guides_resolves() -> None:
    for document in sorted(GUIDES.glob("*.md")):
        broken = [t for t in linked_targets(document) if not t.exists()]
        assert not broken, f"{document}: broken links {broken}"


def test_every_guide_is_a_manifests_or_the_index() -> None:
    # A guide whose manifest is gone would keep a table nothing checks.
    known = {guide_of(path).resolve() for path in MANIFESTS} | {INDEX.resolve()}
    stray = [g for g in GUIDES.glob("*.md") if g.resolve() not in known]
    assert not stray, f"guides without a manifest: {stray}"
