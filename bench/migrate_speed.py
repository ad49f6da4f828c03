"""Speed of `capa migrate` on a large real tree: Django's own source, from its sdist.

Run: python bench/migrate_speed.py [--version 5.2.19]
Downloads the sdist once (pip, cached under ~/.cache/capa-upstream), runs the codemod over it in
check mode (nothing is written) three times and prints files/s of the median run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from capa_compat.migrate.cli import migrate_paths
from capa_compat.migrate.rules import load_rules

CACHE = Path.home() / ".cache" / "capa-upstream"


def django_tree(version: str, into: Path) -> Path:
    sdist = CACHE / f"django-{version}.tar.gz"
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"django=={version}", "-d", str(CACHE)],
            check=True,
        )
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    return into / f"django-{version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="5.2.19")
    args = parser.parse_args()
    rules = load_rules()
    with tempfile.TemporaryDirectory() as scratch:
        tree = django_tree(args.version, Path(scratch))
        runs = [migrate_paths([str(tree)], rules, write=False, progress=False) for _ in range(3)]
    seconds = statistics.median(run.seconds for run in runs)
    run = runs[0]
    print(f"django {args.version}: {run.scanned} files, {len(run.changed)} would change, "
          f"median {seconds:.2f}s, {run.scanned / seconds:,.0f} files/s "
          f"(target: 3,000 files in under 10 s)")


if __name__ == "__main__":
    main()
