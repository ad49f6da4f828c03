"""The ``capa`` command line: the tour runs in a fresh process and prints what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capa_core.__main__ import build_parser

# What the tour must have printed, in this order, whatever the backend.
TOUR_LINES = [
    "1. State",
    "save  order:1 = {\"item\": \"book\", \"qty\": 1}  -> etag ",
    "get   order:1 -> {\"item\": \"book\", \"qty\": 1}  etag ",
    "with the old etag -> refused: ETagMismatch",
    "get   order:1 -> {\"item\": \"book\", \"qty\": 2}",
    "2. Pub/Sub",
    "subscribe group 'billing' to topic 'orders-tour-",
    "3. Configuration",
    "save      shop.discount = 15%",
    "pushed -> shop.discount is now 15%",
    "4. Lock",
    "alice try_lock invoice-42 for 10 s -> taken",
    "bob   try_lock invoice-42 -> refused: alice holds it",
    "bob   unlock   invoice-42 -> LOCK_BELONGS_TO_OTHERS",
    "alice unlock   invoice-42 -> SUCCESS",
    "bob   try_lock invoice-42 -> taken",
    "Tour done in ",
]


def run_capa(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
    env["CAPA_STATE__DEFAULT__URL"] = "bogus://ignored"  # the tour must ignore the shell's CAPA_*
    return subprocess.run(
        [sys.executable, "-m", "capa_core", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=90,
    )


def assert_tour(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    position = 0
    for line in TOUR_LINES:
        found = out.find(line, position)
        assert found >= 0, f"missing (in order) {line!r} in:\n{out}"
        position = found + len(line)
    for number in (1, 2):
        assert out.count(f'billing got   {{"id": {number}}} (attempt 1) -> done') == 1, out
    assert '{"id": 3} (attempt 1) -> asks for a retry' in out
    assert '{"id": 3} (attempt 2) -> done' in out


def test_tour_on_memory_components(tmp_path: Path) -> None:
    result = run_capa("tour", "--url", "memory://", cwd=tmp_path)
    assert_tour(result)
    assert "running on components from memory://" in result.stdout
    assert "(state.memory)" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_no_arguments_run_the_tour_on_the_embedded_sqlite_default(tmp_path: Path) -> None:
    result = run_capa(cwd=tmp_path)
    assert_tour(result)
    assert "running on the embedded default: SQLite file" in result.stdout
    assert "(state.sqlite)" in result.stdout and "(lock.sqlite)" in result.stdout
    assert list(tmp_path.iterdir()) == [], "the default tour leaves nothing in the cwd"


def test_tour_keeps_its_database_where_asked_and_runs_again_on_it(tmp_path: Path) -> None:
    for _ in range(2):
        result = run_capa("tour", "--dir", "data", cwd=tmp_path)
        assert_tour(result)
    assert (tmp_path / "data" / "capa.db").is_file()


def test_a_failing_backend_fails_the_tour(tmp_path: Path) -> None:
    result = run_capa("tour", "--url", "nosuch://x", cwd=tmp_path)
    assert result.returncode != 0
    assert "unknown component type 'nosuch://'" in result.stdout + result.stderr


def test_parser_has_subcommands_for_later_commands() -> None:
    parser = build_parser()
    assert parser.parse_args(["tour", "--url", "memory://"]).url == "memory://"
    help_text = " ".join(parser.format_help().split())
    assert "tour" in help_text and "With no command, runs the tour" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["no-such-command"])


def test_readme_and_ci_run_the_same_test_command() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text()
    blocks = [b.strip() for b in readme.split("```sh\n")[1:]]
    commands = [b.split("\n```")[0].strip() for b in blocks]
    pytest_commands = [c for c in commands if "-m pytest" in c]
    assert len(pytest_commands) == 1, commands
    assert "\n" + pytest_commands[0] + "\n" in ci
    main_job = "python3 -m venv .venv && .venv/bin/pip install -e '.[celery,flask]' && "
    assert main_job + ".venv/bin/capa demo" in commands
    assert "bash .ci/run" in commands
