"""Running an upstream pytest suite in a scratch copy of its tests, with our conftest in front."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    """Counts from the suite's JUnit report, with the names of what did not pass."""

    tests: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    returncode: int = 0
    output: str = ""

    def summary(self, label: str) -> str:
        return (
            f"{label}: {self.tests} collected, {self.passed} passed, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped"
        )


def prepare(upstream_tests: Path, workdir: Path, conftest: Path, ini: str) -> Path:
    """Copy ``upstream_tests`` to ``workdir``; upstream's conftest.py (if any) becomes
    upstream_conftest.py, imported by ours."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(upstream_tests, workdir)
    original = workdir / "conftest.py"
    if original.exists():
        original.rename(workdir / "upstream_conftest.py")
    shutil.copy(conftest, workdir / "conftest.py")
    (workdir / "pytest.ini").write_text(ini)
    return workdir


def run(workdir: Path, files: list[str], *, timeout: float = 300, env: dict[str, str] | None = None,
        extra: list[str] | None = None) -> Outcome:
    """Run pytest on ``files`` inside ``workdir`` in a fresh process; parse its JUnit report."""
    report = workdir / "junit.xml"
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
        "-c", str(workdir / "pytest.ini"), "--rootdir", str(workdir),
        f"--junitxml={report}", *(extra or []), *files,
    ]
    base = env if env is not None else dict(os.environ)
    base = {k: v for k, v in base.items() if not k.startswith("PYTEST_")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    completed = subprocess.run(
        command, cwd=workdir, env=base, capture_output=True, text=True, timeout=timeout,
    )
    outcome = Outcome(returncode=completed.returncode, output=completed.stdout + completed.stderr)
    if not report.is_file():
        outcome.failed.append("(no report: pytest did not run)")
        return outcome
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome.tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.append(name)
        elif case.find("skipped") is not None:
            outcome.skipped.append(name)
        else:
            outcome.passed += 1
    return outcome
