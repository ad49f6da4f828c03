"""`capa demo`, the README's main job: migrates the example shop and runs it on the default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_capa_demo_migrates_and_runs_the_shop(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPA_", "SHOP_"))}
    done = subprocess.run(
        [sys.executable, "-m", "capa_core", "demo", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "+from capa_compat.celery import Celery, shared_task" in out
    assert "GET /orders/" in out and "{'state': 'SUCCESS', 'total': 1.12}" in out
    assert "{'state': 'SUCCESS', 'total': 2.7}" in out  # the retried melon order
    assert "add.delay(2, 3).get() -> 5" in out
    migrated = (tmp_path / "flask_shop" / "shop" / "tasks.py").read_text()
    assert "from capa_compat.celery import Celery, shared_task" in migrated
    assert (tmp_path / "flask_shop" / "capa.db").exists()
