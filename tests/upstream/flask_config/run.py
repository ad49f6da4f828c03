"""Run Flask's tests/test_config.py (from the installed Flask's sdist) against capa_compat.flask.

    python -m tests.upstream.flask_config.run [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.upstream import pytest_suite
from tests.upstream.sdist import source_tree

HERE = Path(__file__).resolve().parent
FILES = ["test_config.py"]
# Flask's own pytest settings: every warning is an error.
INI = "[pytest]\nfilterwarnings =\n    error\n"


def run_suite(workdir: Path) -> pytest_suite.Outcome:
    tests = source_tree("flask") / "tests"
    pytest_suite.prepare(tests, workdir, HERE / "conftest_for_upstream.py", INI)
    return pytest_suite.run(workdir, FILES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="capa-flask-upstream-") as scratch:
        outcome = run_suite(args.workdir or Path(scratch) / "tests")
    print(outcome.output[-4000:])
    print(outcome.summary("flask test_config.py upstream"))
    return 0 if outcome.returncode == 0 and not outcome.failed else 1


if __name__ == "__main__":
    sys.exit(main())
