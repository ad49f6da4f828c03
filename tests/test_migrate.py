"""The codemod: rewrite rules from the manifests, byte-for-byte edits, CLI modes and exit codes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capa_compat.migrate.cli import main
from capa_compat.migrate.rewrite import rewrite_source
from capa_compat.migrate.rules import (
    ManifestError,
    ModuleRule,
    NameRule,
    Rules,
    Status,
    StringRule,
    load_rules,
    manifests_dir,
)

# A small rule set of our own, so the syntax cases do not move when the manifests grow.
RULES = Rules(
    modules={
        "legacy": ModuleRule(
            "legacy", "legacy", "capa_compat.legacy",
            {
                "App": NameRule("App", Status.EXTENDED),
                "task": NameRule("task", Status.SAME),
                "Gone": NameRule("Gone", Status.UNSUPPORTED, "no backend offers it"),
                "Odd": NameRule("Odd", Status.DIFFERENT, "retries differ"),
            },
            whole=True,
        ),
        "legacy.sub": ModuleRule("legacy", "legacy.sub", "capa_compat.legacy.sub", whole=True),
        "web": ModuleRule(
            "web", "web", "capa_compat.web",
            {"Web": NameRule("Web", Status.EXTENDED), "Config": NameRule("Config", Status.SAME)},
        ),
        "pkg.cache": ModuleRule(
            "pkg", "pkg.cache", "capa_compat.pkg.cache",
            {"cache": NameRule("cache", Status.SAME)},
        ),
    },
    strings={
        "pkg.backends.RedisCache": StringRule("pkg", "pkg.backends.RedisCache", "capa.Cache"),
    },
    libraries=("legacy", "web", "pkg"),
)

PAIRS = [
    ("from-import", "from legacy import App\n", "from capa_compat.legacy import App\n"),
    ("alias", "from legacy import App as A, task\n",
     "from capa_compat.legacy import App as A, task\n"),
    ("comment kept", "from legacy import App  # the app\n",
     "from capa_compat.legacy import App  # the app\n"),
    ("parenthesized", "from legacy import (\n    App,  # one\n    task,\n)\n",
     "from capa_compat.legacy import (\n    App,  # one\n    task,\n)\n"),
    ("submodule", "from legacy.sub import thing\n", "from capa_compat.legacy.sub import thing\n"),
    ("import", "import legacy\n", "import capa_compat.legacy as legacy\n"),
    ("import as", "import legacy as lg\n", "import capa_compat.legacy as lg\n"),
    ("import dotted", "import legacy.sub\n",
     "import capa_compat.legacy.sub, capa_compat.legacy as legacy\n"),
    ("import among others", "import os, legacy\n", "import os, capa_compat.legacy as legacy\n"),
    ("star of a whole module", "from legacy import *\n", "from capa_compat.legacy import *\n"),
    ("partial split", "from web import Web, request\n",
     "from capa_compat.web import Web\nfrom web import request\n"),
    ("partial split, indented", "if x:\n    from web import request, Config\n",
     "if x:\n    from capa_compat.web import Config\n    from web import request\n"),
    ("partial split, last name", "from web import request, Web\n",
     "from capa_compat.web import Web\nfrom web import request\n"),
    ("partial, all covered", "from web import Web, Config\n",
     "from capa_compat.web import Web, Config\n"),
    ("dotted module", "from pkg.cache import cache\n", "from capa_compat.pkg.cache import cache\n"),
    ("setting string", 'B = "pkg.backends.RedisCache"\n', 'B = "capa.Cache"\n'),
    ("setting string, single quotes", "C = {'BACKEND': 'pkg.backends.RedisCache'}\n",
     "C = {'BACKEND': 'capa.Cache'}\n"),
    ("crlf", "import os\r\nfrom web import Web, request\r\nx = 1\r\n",
     "import os\r\nfrom capa_compat.web import Web\r\nfrom web import request\r\nx = 1\r\n"),
    ("inside a function", "def f():\n    from legacy import task\n    return task\n",
     "def f():\n    from capa_compat.legacy import task\n    return task\n"),
]

NO_OPS = [
    ("other module", "from legacy_tools import App\nimport web_utils\n"),
    ("relative import", "from .legacy import App\n"),
    ("uncovered names only", "from web import request, g\n"),
    ("star of a partial module", "from web import *\n"),
    ("unsupported name stays", "from legacy import Gone\n"),
    ("import of a partial module", "import web\n"),
    ("string not exact", 'B = "pkg.backends.RedisCacheX"\nD = "pkg.backends." "RedisCache"\n'),
    ("already migrated",
     "from capa_compat.legacy import App\nimport capa_compat.legacy as legacy\n"),
    ("mention in a comment", "# from legacy import App\nx = 'from legacy import App'\n"),
]


@pytest.mark.parametrize(("name", "before", "after"), PAIRS, ids=[p[0] for p in PAIRS])
def test_rewrite_pair(name: str, before: str, after: str) -> None:
    result = rewrite_source(before, RULES)
    assert result.source == after
    assert result.changed
    again = rewrite_source(result.source, RULES)
    assert again.source == result.source and not again.changed  # a second run is a no-op
    ast.parse(result.source)


@pytest.mark.parametrize(("name", "source"), NO_OPS, ids=[n[0] for n in NO_OPS])
def test_no_op(name: str, source: str) -> None:
    result = rewrite_source(source, RULES)
    assert result.source == source and not result.changed


def test_findings_name_unsupported_and_different_uses() -> None:
    source = "import legacy\nfrom legacy import Gone, Odd, App\nlegacy.Gone()\n"
    result = rewrite_source(source, RULES)
    found = [(f.line, f.name, f.status) for f in result.findings]
    assert (2, "legacy.Gone", Status.UNSUPPORTED) in found
    assert (2, "legacy.Odd", Status.DIFFERENT) in found
    assert (3, "legacy.Gone", Status.UNSUPPORTED) in found
    assert "from capa_compat.legacy import Odd, App" in result.source
    assert "from legacy import Gone" in result.source


def test_a_star_import_of_a_partial_module_is_reported() -> None:
    result = rewrite_source("from web import *\n", RULES)
    assert not result.changed
    assert [(f.name, f.status) for f in result.findings] == [("web.*", Status.DIFFERENT)]


def test_a_file_that_does_not_parse_is_left_alone() -> None:
    source = "from legacy import App\ndef broken(:\n"
    result = rewrite_source(source, RULES)
    assert result.source == source and result.error and not result.changed


# --- the real manifests -------------------------------------------------------------------------

def _manifest_cases() -> list[tuple[str, str, str]]:
    """A before/after pair for every module and every setting string of every manifest."""
    rules = load_rules()
    cases = []
    for module in rules.modules.values():
        moving = [n for n, r in module.names.items() if r.status is not Status.UNSUPPORTED]
        if moving:
            name = moving[0]
            cases.append((f"{module.old}.{name}", f"from {module.old} import {name}\n",
                          f"from {module.new} import {name}\n"))
    for string in rules.strings.values():
        cases.append((string.old, f'VALUE = "{string.old}"\n', f'VALUE = "{string.new}"\n'))
    return cases


def test_manifests_load_and_name_real_shim_modules() -> None:
    rules = load_rules()
    assert rules.libraries
    for module in rules.modules.values():
        assert module.new.startswith("capa_compat.")


@pytest.mark.parametrize(("rule", "before", "after"), _manifest_cases())
def test_every_manifest_rule_rewrites_and_is_idempotent(rule: str, before: str, after: str) -> None:
    rules = load_rules()
    result = rewrite_source(before, rules)
    assert result.source == after
    assert rewrite_source(after, rules).source == after
    # And the same line with a name from elsewhere is left alone.
    assert not rewrite_source(before.replace(rule.split(".")[0], "unrelated_pkg", 1), rules).changed


def test_a_bad_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text(
        'library = "x"\nupstream = "x"\n[[modules]]\nold = "x"\nnew = "capa_compat.x"\n'
        '[modules.names]\nY = { status = "unsupported" }\n'
    )
    with pytest.raises(ManifestError, match="needs a note"):
        load_rules(tmp_path)


# --- the CLI --------------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small legacy tree: one file to migrate, one broken, one Latin-1, one untouched."""
    first = next(iter(_manifest_cases()))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tasks.py").write_text(first[1] + "# keep me\n")
    (tmp_path / "app" / "broken.py").write_text(first[1] + "def (:\n")
    (tmp_path / "app" / "latin.py").write_bytes(
        b"# -*- coding: latin-1 -*-\n" + first[1].encode() + b"s = '\xe9t\xe9'\n"
    )
    (tmp_path / "app" / "plain.py").write_text("import os\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skip.py").write_text(first[1])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_check_diff_write_and_exit_codes(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, before, after = _manifest_cases()[0]
    tasks = tree / "app" / "tasks.py"
    assert main(["--check", "app"]) == 1
    assert tasks.read_text() == before + "# keep me\n"  # --check writes nothing
    assert main(["--diff", "app"]) == 1
    assert f"+{after.strip()}" in capsys.readouterr().out
    # Writing: the broken file is reported and untouched (exit 3), the Latin-1 one is migrated.
    assert main(["app"]) == 3
    out = capsys.readouterr().out
    assert "broken.py: left untouched" in out
    assert tasks.read_text() == after + "# keep me\n"
    assert (tree / "app" / "latin.py").read_bytes().endswith(b"s = '\xe9t\xe9'\n")
    assert after.encode() in (tree / "app" / "latin.py").read_bytes()
    assert (tree / ".venv" / "skip.py").read_text() == before
    # A second run changes nothing.
    assert main(["--check", "app/tasks.py", "app/latin.py"]) == 0


def test_cli_json_report_and_list(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--report", "json", "app"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["scanned"] == 4
    paths = {Path(f["path"]).name: f for f in report["files"]}
    assert paths["tasks.py"]["changed"] and paths["broken.py"]["error"]
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{lib}:" in listing for lib in load_rules().libraries)


def test_cli_usage_errors(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "nosuchlib", "app"]) == 2
    assert "unknown library 'nosuchlib'" in capsys.readouterr().err
    assert main(["missing_dir"]) == 2
    assert main([]) == 2


def test_cli_only_and_skip(tree: Path) -> None:
    case = _manifest_cases()[0]
    library = next(m.library for m in load_rules().modules.values()
                   if case[1].startswith(f"from {m.old} "))
    assert main(["--check", "--skip", library, "app/tasks.py"]) == 0
    assert main(["--check", "--only", library, "app/tasks.py"]) == 1


def test_stdin_mode() -> None:
    _, before, after = _manifest_cases()[0]
    done = subprocess.run(
        [sys.executable, "-m", "capa_compat.migrate.cli", "-"], input=before,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and done.stdout == after
    check = subprocess.run(
        [sys.executable, "-m", "capa_compat.migrate.cli", "--check", "-"], input=before,
        capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 1 and check.stdout == ""


def test_manifests_dir_is_the_checkouts_shims() -> None:
    assert (manifests_dir() / "README.md").is_file()


# --- properties ----------------------------------------------------------------------------------

STATEMENTS = st.sampled_from([
    "from legacy import App", "from legacy import App as A, task", "import legacy",
    "import legacy.sub", "import os, legacy as lg", "from web import Web, request",
    "from web import request", "from web import (\n    Config,  # c\n    g,\n)",
    "from pkg.cache import cache", "X = 'pkg.backends.RedisCache'", "import os",
    "from legacy import Gone, App", "y = legacy.Gone if 0 else 1", "from . import legacy",
])
INDENTS = st.sampled_from(["", "    "])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(STATEMENTS, INDENTS, st.booleans()), min_size=1, max_size=8),
       st.sampled_from(["\n", "\r\n"]))
def test_output_always_parses_and_a_second_run_is_a_no_op(
    statements: list[tuple[str, str, bool]], newline: str
) -> None:
    lines = []
    for statement, indent, comment in statements:
        text = statement.replace("\n", "\n" + indent) if indent else statement
        if indent:
            lines.append("if True:")
        lines.append(indent + text + ("  # note" if comment else ""))
    source = newline.join(line.replace("\n", newline) for line in lines) + newline
    first = rewrite_source(source, RULES)
    assert first.error is None
    ast.parse(first.source)
    assert rewrite_source(first.source, RULES).source == first.source
