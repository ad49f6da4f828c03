"""The rewrite rules of the codemod, read from the shim manifests in shims/."""

from __future__ import annotations

import enum
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Status(enum.Enum):
    SAME = "same"  # behaves as upstream
    EXTENDED = "extended"  # upstream's behaviour plus capa features
    DIFFERENT = "different"  # works, with a documented difference
    UNSUPPORTED = "unsupported"  # not provided by the shim; stays on the legacy import


@dataclass(frozen=True)
class NameRule:
    name: str
    status: Status
    note: str = ""


@dataclass(frozen=True)
class ModuleRule:
    """One legacy module and the shim module that replaces it."""

    library: str
    old: str
    new: str
    names: Mapping[str, NameRule] = field(default_factory=dict)
    # True when the shim module stands for the whole legacy module, so `import old` and
    # `from old import *` move too; False when only the listed names move.
    whole: bool = False

    def moves(self, name: str) -> bool:
        rule = self.names.get(name)
        if rule is None:
            return self.whole
        return rule.status is not Status.UNSUPPORTED


@dataclass(frozen=True)
class StringRule:
    """A setting string naming a legacy class, and what to write instead."""

    library: str
    old: str
    new: str
    note: str = ""


@dataclass(frozen=True)
class Rules:
    modules: Mapping[str, ModuleRule]
    strings: Mapping[str, StringRule]
    libraries: tuple[str, ...]

    @property
    def needles(self) -> tuple[str, ...]:
        """Substrings of which a file must contain one to be worth parsing.

        Every import the codemod rewrites names a mapped module in full (`import a.b` and
        `from a.b import c` both contain "a.b"), so the full names are enough; a bare root such
        as "django" would send every file of a Django project through the parser.
        """
        return tuple(sorted(set(self.modules) | set(self.strings)))

    def only(self, keep: Iterable[str]) -> Rules:
        wanted = set(keep)
        return Rules(
            {k: m for k, m in self.modules.items() if m.library in wanted},
            {k: s for k, s in self.strings.items() if s.library in wanted},
            tuple(lib for lib in self.libraries if lib in wanted),
        )


def manifests_dir() -> Path:
    """shims/ of a source checkout, or the copy packaged inside capa_compat."""
    override = os.environ.get("CAPA_SHIMS_DIR")
    if override:
        return Path(override)
    packaged = Path(__file__).resolve().parent.parent / "shims"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "shims"


class ManifestError(ValueError):
    """A shim manifest that does not follow the schema in shims/README.md."""


def load_rules(directory: Path | None = None) -> Rules:
    """Rules from every shims/*.toml."""
    directory = directory or manifests_dir()
    modules: dict[str, ModuleRule] = {}
    strings: dict[str, StringRule] = {}
    libraries: list[str] = []
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ManifestError(f"no shim manifests (*.toml) in {directory}")
    for file in files:
        manifest = read_manifest(file)
        library = manifest["library"]
        libraries.append(library)
        for module in manifest.get("modules", []):
            names = {
                name: NameRule(name, _status(file, name, spec), spec.get("note", ""))
                for name, spec in module.get("names", {}).items()
            }
            modules[module["old"]] = ModuleRule(
                library, module["old"], module["new"], names, bool(module.get("whole", False))
            )
        for setting in manifest.get("settings", []):
            strings[setting["old"]] = StringRule(
                library, setting["old"], setting["new"], setting.get("note", "")
            )
    return Rules(modules, strings, tuple(libraries))


def read_manifest(file: Path) -> dict[str, Any]:
    try:
        manifest = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{file}: {exc}") from None
    for key in ("library", "upstream"):
        if not isinstance(manifest.get(key), str):
            raise ManifestError(f"{file}: `{key}` must be a string (see shims/README.md)")
    for module in manifest.get("modules", []):
        if not isinstance(module.get("old"), str) or not isinstance(module.get("new"), str):
            raise ManifestError(f"{file}: every [[modules]] needs `old` and `new` import paths")
    return manifest


def _status(file: Path, name: str, spec: Mapping[str, str]) -> Status:
    try:
        status = Status(spec["status"])
    except (KeyError, ValueError):
        choices = ", ".join(s.value for s in Status)
        raise ManifestError(f"{file}: {name}: status must be one of {choices}") from None
    if status in (Status.DIFFERENT, Status.UNSUPPORTED) and not spec.get("note"):
        raise ManifestError(f"{file}: {name}: a {status.value} name needs a note saying why")
    return status
