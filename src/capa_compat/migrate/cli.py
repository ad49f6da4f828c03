"""`capa migrate`: rewrite a legacy app's imports onto capa_compat and report what differs.

Exit codes: 0 done (or nothing to do); 1 with --check or --diff, some file would change;
2 bad usage or manifests; 3 some file could not be read or parsed (left untouched).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import sys
import time
import tokenize
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .rewrite import Result, rewrite_source
from .rules import ManifestError, Rules, Status, load_rules

EXIT_OK, EXIT_CHANGES, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
SKIP_DIRS = {".git", ".hg", ".tox", ".nox", ".venv", "venv", "node_modules", "__pycache__",
             "build", "dist", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


@dataclass
class FileOutcome:
    path: str
    result: Result


@dataclass
class Run:
    outcomes: list[FileOutcome] = field(default_factory=list)
    scanned: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.result.changed]

    @property
    def errors(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if o.result.error]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="files or directories; '-' reads stdin")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when a file would change")
    mode.add_argument("--diff", action="store_true",
                      help="print a unified diff instead of writing; exit 1 on changes")
    parser.add_argument("--only", action="append", metavar="LIB", default=[],
                        help="rewrite only this library (repeatable)")
    parser.add_argument("--skip", action="append", metavar="LIB", default=[],
                        help="leave this library alone (repeatable)")
    parser.add_argument("--list", action="store_true",
                        help="list the libraries, modules and settings the codemod knows")
    parser.add_argument("--report", choices=("text", "json"), default="text",
                        help="report format (json for tools)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def select_rules(rules: Rules, only: Sequence[str], skip: Sequence[str]) -> Rules:
    unknown = [lib for lib in [*only, *skip] if lib not in rules.libraries]
    if unknown:
        raise ManifestError(
            f"unknown library {unknown[0]!r}; known: {', '.join(rules.libraries)}"
        )
    keep = only or rules.libraries
    return rules.only(lib for lib in keep if lib not in skip)


def python_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*.py")):
                if not SKIP_DIRS.intersection(child.relative_to(path).parts[:-1]):
                    yield child
        else:
            yield path


def read_source(path: Path) -> tuple[str, str]:
    """The text of a Python file and its encoding (PEP 263 cookie or UTF-8)."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding), encoding


def migrate_file(path: Path, rules: Rules, *, write: bool) -> Result:
    try:
        source, encoding = read_source(path)
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        return Result("", error=f"cannot read: {exc}")
    result = rewrite_source(source, rules)
    if write and result.changed:
        path.write_bytes(result.source.encode(encoding))
    return result


def migrate_paths(paths: Sequence[str], rules: Rules, *, write: bool, progress: bool) -> Run:
    run = Run()
    start = time.perf_counter()
    files = list(python_files(paths))
    bar = None
    if progress and len(files) > 200:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", file=sys.stderr, leave=False)
    for path in files:
        run.scanned += 1
        result = migrate_file(path, rules, write=write)
        if result.changed or result.findings or result.error:
            run.outcomes.append(FileOutcome(str(path), result))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    run.seconds = time.perf_counter() - start
    return run


def print_list(rules: Rules, out: io.TextIOBase | None = None) -> None:
    out = out or sys.stdout  # type: ignore[assignment]
    for library in rules.libraries:
        print(f"{library}:", file=out)
        for module in rules.modules.values():
            if module.library == library:
                scope = "whole module" if module.whole else f"{len(module.names)} names"
                print(f"  {module.old} -> {module.new} ({scope})", file=out)
        for setting in rules.strings.values():
            if setting.library == library:
                print(f"  '{setting.old}' -> '{setting.new}'", file=out)


def text_report(run: Run, *, quiet: bool) -> str:
    lines: list[str] = []
    if not quiet:
        for outcome in run.outcomes:
            if outcome.result.error:
                lines.append(f"{outcome.path}: left untouched, {outcome.result.error}")
            for f in outcome.result.findings:
                lines.append(f"{outcome.path}:{f.line}:{f.col + 1}: {f.name} is "
                             f"{f.status.value}: {f.note}")
    rewritten: Counter[str] = Counter()
    files: Counter[str] = Counter()
    different: Counter[str] = Counter()
    unsupported: Counter[str] = Counter()
    for outcome in run.outcomes:
        rewritten.update(outcome.result.edits)
        files.update(set(outcome.result.edits))
        for f in outcome.result.findings:
            (unsupported if f.status is Status.UNSUPPORTED else different)[f.library] += 1
    libraries = sorted(set(rewritten) | set(different) | set(unsupported))
    if libraries:
        lines.append("")
        lines.append(f"{'library':<14}{'files':>7}{'edits':>7}{'different':>11}{'unsupported':>13}")
        for lib in libraries:
            lines.append(f"{lib:<14}{files[lib]:>7}{rewritten[lib]:>7}{different[lib]:>11}"
                         f"{unsupported[lib]:>13}")
    rate = run.scanned / run.seconds if run.seconds else 0.0
    lines.append(
        f"{run.scanned} files scanned, {len(run.changed)} rewritten, {len(run.errors)} "
        f"left untouched, in {run.seconds:.2f}s ({rate:,.0f} files/s)"
    )
    return "\n".join(lines)


def json_report(run: Run) -> str:
    return json.dumps({
        "scanned": run.scanned,
        "seconds": round(run.seconds, 3),
        "files": [
            {
                "path": o.path,
                "changed": o.result.changed,
                "edits": dict(o.result.edits),
                "error": o.result.error,
                "findings": [
                    {"line": f.line, "col": f.col + 1, "library": f.library, "name": f.name,
                     "status": f.status.value, "note": f.note}
                    for f in o.result.findings
                ],
            }
            for o in run.outcomes
        ],
    }, indent=2)


def run(args: argparse.Namespace) -> int:
    try:
        rules = select_rules(load_rules(), args.only, args.skip)
    except ManifestError as exc:
        print(f"capa migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        print_list(rules)
        return EXIT_OK
    if not args.paths:
        print("capa migrate: name the files or directories to migrate ('-' for stdin)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.paths == ["-"]:
        return _stdin(rules, args)
    if "-" in args.paths:
        print("capa migrate: '-' (stdin) cannot be mixed with paths", file=sys.stderr)
        return EXIT_USAGE
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"capa migrate: no such file or directory: {missing[0]}", file=sys.stderr)
        return EXIT_USAGE
    write = not (args.check or args.diff)
    outcome = migrate_paths(args.paths, rules, write=write, progress=sys.stderr.isatty())
    if args.diff:
        for changed in outcome.changed:
            sys.stdout.write(unified_diff(changed.path, read_source(Path(changed.path))[0],
                                   changed.result.source))
    report = json_report(outcome) if args.report == "json" else text_report(
        outcome, quiet=args.quiet)
    print(report, file=sys.stdout if args.report == "json" or not args.diff else sys.stderr)
    if (args.check or args.diff) and outcome.changed:
        return EXIT_CHANGES
    return EXIT_UNREADABLE if outcome.errors else EXIT_OK


def _stdin(rules: Rules, args: argparse.Namespace) -> int:
    source = sys.stdin.read()
    result = rewrite_source(source, rules)
    if result.error:
        sys.stdout.write(source)
        print(f"<stdin>: left untouched, {result.error}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.diff:
        sys.stdout.write(unified_diff("<stdin>", source, result.source))
    elif not args.check:
        sys.stdout.write(result.source)
    for f in result.findings:
        print(f"<stdin>:{f.line}:{f.col + 1}: {f.name} is {f.status.value}: {f.note}",
              file=sys.stderr)
    return EXIT_CHANGES if (args.check or args.diff) and result.changed else EXIT_OK


def unified_diff(path: str, before: str, after: str) -> str:
    """A unified diff of one file's rewrite."""
    return "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=path, tofile=path,
    ))


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `capa migrate` to the `capa` command (entry point group capa.commands)."""
    parser = commands.add_parser(
        "migrate", help="rewrite a legacy app's imports and settings onto capa_compat",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capa migrate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
