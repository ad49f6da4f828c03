"""Every shim manifest (shims/*.toml) tells the truth about its shim, compared with upstream.

For each name a manifest moves: the shim exports it, and it has upstream's call signature (a
function's parameters; a class's constructor and every public method upstream defines); a
constant has upstream's type. For each setting string: both classes import, the new one is
constructed with the same positional arguments, and every public method of the old one exists
in the new one with its signature, unless the rule lists it under ``not_provided`` (absent) or
``differs`` (present, with other parameters: the reason is given). The installed
upstream version is inside the manifest's ``versions`` range. A manifest whose upstream library
is not installed is skipped (in CI every one is).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import tomllib
from pathlib import Path
from typing import Any

import pytest

SHIMS = Path(__file__).resolve().parent.parent / "shims"
MANIFESTS = sorted(SHIMS.glob("*.toml"))
_EMPTY = inspect.Parameter.empty


def read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def name_cases() -> list[Any]:
    cases = []
    for path in MANIFESTS:
        manifest = read(path)
        for module in manifest.get("modules", []):
            for name, spec in module.get("names", {}).items():
                if spec.get("status") == "unsupported":
                    continue
                cases.append(pytest.param(
                    manifest["upstream"], module["old"], module["new"], name, spec,
                    id=f"{path.stem}:{module['old']}.{name}",
                ))
    return cases


def setting_cases() -> list[Any]:
    cases = []
    for path in MANIFESTS:
        manifest = read(path)
        for rule in manifest.get("settings", []):
            cases.append(pytest.param(manifest["upstream"], rule, id=f"{path.stem}:{rule['old']}"))
    return cases


def upstream_module(distribution: str, module: str) -> Any:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed")
    return importlib.import_module(module)


def split_dotted(path: str) -> tuple[str, str]:
    """("pkg.module", "Class") from "pkg.module.Class" or "pkg.module:Class"."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    return module, attr


def import_dotted(path: str) -> Any:
    module, attr = split_dotted(path)
    return getattr(importlib.import_module(module), attr)


# --- signatures -----------------------------------------------------------------------------------


def signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and C types without a signature
        return None


def same_default(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False


def accepts_anything(sig: inspect.Signature) -> bool:
    """(self, *args, **kwargs): a pass-through that takes whatever it is given."""
    kinds = [p.kind for p in sig.parameters.values() if p.name != "self"]
    return kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


def differences(shim: Any, upstream: Any) -> list[str]:
    """How the shim's call signature differs from upstream's (names, kinds, defaults).

    A shim forwarding (*args, **kwargs) takes every call upstream takes; an upstream method of
    that form states no signature to compare with.
    """
    ours, theirs = signature(shim), signature(upstream)
    if ours is None or theirs is None:
        return [] if ours is None and theirs is None else [f"signature {ours} vs {theirs}"]
    if accepts_anything(ours) or accepts_anything(theirs):
        return []
    a, b = list(ours.parameters.values()), list(theirs.parameters.values())
    if [(p.name, p.kind) for p in a] != [(p.name, p.kind) for p in b]:
        return [f"parameters {ours} vs upstream {theirs}"]
    return [
        f"default of {p.name}: {p.default!r} vs upstream {q.default!r}"
        for p, q in zip(a, b, strict=True)
        if not same_default(p.default, q.default)
    ]


def public_methods(cls: type) -> dict[str, Any]:
    """Public functions of a class (static and class methods unwrapped), found without
    triggering properties or __getattr__."""
    methods = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        if isinstance(attr, staticmethod | classmethod):
            attr = attr.__func__
        if inspect.isfunction(attr) or inspect.ismethoddescriptor(attr):
            methods[name] = attr
    return methods


def class_differences(shim: type, upstream: type, skip: set[str] = frozenset()) -> list[str]:
    problems = [f"constructor: {d}" for d in differences(shim, upstream)]
    ours = public_methods(shim)
    for name, method in public_methods(upstream).items():
        if name in skip:
            continue
        if name not in ours:
            problems.append(f"method {name} is missing")
            continue
        problems += [f"{name}: {d}" for d in differences(ours[name], method)]
    return problems


# --- the checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_upstream_version_is_in_range(path: Path) -> None:
    from packaging.specifiers import SpecifierSet

    manifest = read(path)
    try:
        installed = importlib.metadata.version(manifest["upstream"])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{manifest['upstream']} is not installed")
    assert installed in SpecifierSet(manifest.get("versions", "")), (
        f"{manifest['upstream']} {installed} is outside the tested range {manifest['versions']}"
    )


@pytest.mark.parametrize(("upstream", "old", "new", "name", "spec"), name_cases())
def test_name_exists_with_upstreams_signature(
    upstream: str, old: str, new: str, name: str, spec: dict[str, Any]
) -> None:
    legacy = upstream_module(upstream, old)
    shim_module = importlib.import_module(new)
    assert hasattr(shim_module, name), f"{new} does not export {name} ({old}.{name})"
    assert hasattr(legacy, name), f"{old} has no {name}: the manifest names what upstream lacks"
    ours, theirs = getattr(shim_module, name), getattr(legacy, name)
    if ours is theirs:
        return  # re-exported as is
    if inspect.ismodule(theirs):
        assert inspect.ismodule(ours) and ours.__name__ == theirs.__name__
    elif inspect.isclass(theirs):
        assert inspect.isclass(ours), f"{new}.{name} is not a class"
        assert class_differences(ours, theirs) == []
    elif inspect.isroutine(theirs):
        assert callable(ours)
        assert differences(ours, theirs) == []
    else:
        # An instance (a proxy, a handler, a settings object): of upstream's type. Only type()
        # is asked: lazy objects set themselves up on any attribute, even __class__.
        a, b = type(ours), type(theirs)
        assert issubclass(a, b) or issubclass(b, a), f"{a} is not a {b}"
        if isinstance(theirs, str | int | float | tuple | frozenset):
            assert ours == theirs


@pytest.mark.parametrize(("upstream", "rule"), setting_cases())
def test_setting_string_names_a_compatible_class(upstream: str, rule: dict[str, Any]) -> None:
    module = split_dotted(rule["old"])[0]
    root = module.split(".")[0]
    try:
        upstream_module(upstream, module)
    except ImportError:
        pytest.skip(f"{module} does not import here ({root} extras missing)")
    old, new = import_dotted(rule["old"]), import_dotted(rule["new"])
    assert inspect.isclass(new), f"{rule['new']} is not a class"
    positional = [
        p for p in signature(old).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is _EMPTY
    ]
    ours = [
        p for p in signature(new).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is _EMPTY
    ]
    if not (accepts_anything(signature(new)) or accepts_anything(signature(old))):
        assert len(ours) == len(positional), f"constructor {signature(new)} vs {signature(old)}"
    not_provided = set(rule.get("not_provided", []))
    stale = not_provided & set(public_methods(new))
    assert not stale, f"listed as not provided, but the shim has them: {sorted(stale)}"
    differs = dict(rule.get("differs", {}))
    problems = [
        p for p in class_differences(new, old, skip=not_provided)
        if not p.startswith("constructor") and p.split(":")[0] not in differs
    ]
    assert problems == []
    missing = set(differs) - set(public_methods(new))
    assert not missing, f"`differs` names methods the shim lacks: {sorted(missing)}"


def whole_module_cases() -> list[Any]:
    return [
        pytest.param(read(path)["upstream"], module, id=f"{path.stem}:{module['old']}")
        for path in MANIFESTS
        for module in read(path).get("modules", [])
        if module.get("whole")
    ]


@pytest.mark.parametrize(("upstream", "module"), whole_module_cases())
def test_a_whole_module_shim_lists_and_exports_all_of_upstreams_names(
    upstream: str, module: dict[str, Any]
) -> None:
    """whole = true moves `import old` too, so every public name of old must be in the shim."""
    legacy = upstream_module(upstream, module["old"])
    public = getattr(legacy, "__all__", None)
    if public is None:
        pytest.skip(f"{module['old']} has no __all__")
    shim = importlib.import_module(module["new"])
    assert [n for n in public if not hasattr(shim, n)] == []
    assert [n for n in public if n not in module.get("names", {})] == []


def test_every_manifest_has_a_case() -> None:
    assert MANIFESTS, "no shims/*.toml"
    stems = {p.stem for p in MANIFESTS}
    assert {"django_cache", "flask", "dynaconf"} <= stems
