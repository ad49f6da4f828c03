"""dynaconf's own tests pass with its settings classes replaced by capa_compat.dynaconf's.

The capa loader is on for every settings object of the run (on an in-memory capa store), and the
run fails if it never ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("dynaconf")
pytest.importorskip("configobj")  # dynaconf's ini loader

from tests.upstream.dynaconf_settings.run import run_suite


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_dynaconf_suite_passes(tmp_path: Path) -> None:
    outcome = run_suite(tmp_path / "tests")
    assert outcome.failed == [], outcome.output[-8000:]
    assert outcome.skipped == [], outcome.skipped
    assert outcome.tests >= 300 and outcome.passed == outcome.tests, outcome.output[-4000:]
    assert "capa loader ran" in outcome.output and "capa loader ran 0 times" not in outcome.output
    assert outcome.returncode == 0, outcome.output[-4000:]
