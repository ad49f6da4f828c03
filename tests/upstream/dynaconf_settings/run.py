"""Run dynaconf's own tests (from the installed dynaconf's sdist) against capa_compat.dynaconf.

    python -m tests.upstream.dynaconf_settings.run [--workdir DIR]

The files are those using only dynaconf's public names: settings, validators, environment
variables, the file loaders and the Flask extension.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.upstream import pytest_suite
from tests.upstream.sdist import source_tree

HERE = Path(__file__).resolve().parent
FILES = [
    "test_base.py",
    "test_validators.py",
    "test_validators_conditions.py",
    "test_env_loader.py",
    "test_envvar_prefix.py",
    "test_compat.py",
    "test_toml_loader.py",
    "test_yaml_loader.py",
    "test_json_loader.py",
    "test_ini_loader.py",
    "test_py_loader.py",
    "test_flask.py",
]
INI = "[pytest]\nmarkers =\n    integration: needs external services\n"


def clean_environment() -> dict[str, str]:
    """The caller's environment without anything dynaconf, Flask, Django or capa would read."""
    prefixes = ("DYNACONF", "DYNA", "FLASK_", "DJANGO_", "CAPA_", "SETTINGS_FILE", "ENV_FOR_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    if os.environ.get("CAPA_HARNESS_CONTROL"):
        clean["CAPA_HARNESS_CONTROL"] = "1"
    return clean


def install_flask_modules(workdir: Path) -> None:
    """What test_flask.py imports from dynaconf's repository (not in the sdist), as
    tests_functional.legacy.flask_with_dotenv.app and tests_functional.legacy.dummy_flask_extension.
    """
    legacy = workdir / "tests_functional" / "legacy"
    app = legacy / "flask_with_dotenv"
    app.mkdir(parents=True)
    for level in (legacy.parent, legacy, app):
        (level / "__init__.py").write_text("")
    shutil.copy(HERE / "flask_with_dotenv" / "app.py", app / "app.py")
    shutil.copy(HERE / "flask_with_dotenv" / "dotenv", app / ".env")
    shutil.copytree(HERE / "dummy_flask_extension", legacy / "dummy_flask_extension")


def run_suite(workdir: Path) -> pytest_suite.Outcome:
    tests = source_tree("dynaconf") / "tests"
    pytest_suite.prepare(tests, workdir, HERE / "conftest_for_upstream.py", INI)
    install_flask_modules(workdir)
    shutil.copy(HERE / "dotenv_for_tests", workdir / ".env")
    return pytest_suite.run(
        workdir, FILES, env=clean_environment(), extra=["-m", "not integration"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="capa-dynaconf-upstream-") as scratch:
        outcome = run_suite(args.workdir or Path(scratch) / "tests")
    print(outcome.output[-6000:])
    print(outcome.summary("dynaconf upstream"))
    return 0 if outcome.returncode == 0 and not outcome.failed else 1


if __name__ == "__main__":
    sys.exit(main())
