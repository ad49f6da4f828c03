"""Turns capa.toml / capa.yaml, CAPA_* variables and Dapr component files into component specs.

This is the one place settings are read. Every problem is reported here, at start-up, as a
SettingsError naming the file, the key and what to write instead.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SettingsError, UnknownComponentType
from .registry import BLOCKS, normalize_type, resolve, type_for_url

CONFIG_FILES = ("capa.toml", "capa.yaml", "capa.yml")
DEFAULT_DB = "capa.db"
DEFAULT_NAME = "default"
ENV_PREFIX = "CAPA_"
_CAPA_KEYS = {
    "app_id": str,
    "codec": str,
    "allow_pickle": bool,
    "components_dir": str,
    "default_url": str,
    "retries": int,
}


@dataclass(frozen=True)
class SecretRef:
    """A metadata value to be read from a secret store at start-up."""

    store: str
    name: str
    key: str


@dataclass(frozen=True)
class ComponentSpec:
    """One configured component: block, name, type and its metadata, with where it came from."""

    block: str
    name: str
    type: str
    metadata: Mapping[str, Any]
    source: str


@dataclass(frozen=True)
class Settings:
    app_id: str = ""
    codec: str = "json"
    allow_pickle: bool = False
    retries: int = 3
    default_url: str = ""
    components: Mapping[tuple[str, str], ComponentSpec] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def names(self, block: str) -> list[str]:
        return sorted(name for b, name in self.components if b == block)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    document: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the settings file (``path``, $CAPA_CONFIG or ./capa.toml), env vars, component dir.

    ``document`` stands in for the file: a mapping shaped like capa.toml, built in code.
    """
    env = os.environ if env is None else env
    base = Path(cwd) if cwd is not None else Path.cwd()
    capa: dict[str, Any] = {}
    specs: dict[tuple[str, str], ComponentSpec] = {}
    sources: list[str] = []

    file = None
    if document is not None:
        source = "settings given in code"
        document = _check_document(dict(document), source)
    else:
        file = _find_file(path, env, base)
        if file is not None:
            source = str(file)
            document = _read_document(file)
    if document is not None:
        sources.append(source)
        document = dict(document)
        capa.update(_capa_table(document.pop("capa", {}), source))
        for block, table in document.items():
            specs.update(_component_tables(block, table, source))

    capa.update(_capa_from_env(env))
    for spec in _components_from_env(env):
        specs[(spec.block, spec.name)] = spec

    components_dir = capa.get("components_dir")
    if components_dir is not None:
        directory = (file.parent if file is not None else base) / components_dir
        if not directory.is_dir():
            raise SettingsError(
                sources[0] if sources else "environment", "components_dir",
                f"{directory} is not a directory", "create it or correct the path",
            )
        for spec in _dapr_components(directory):
            specs[(spec.block, spec.name)] = spec
        sources.append(str(directory))

    default_url = capa.get("default_url") or f"sqlite:///{base / DEFAULT_DB}"
    for block in ("state", "pubsub", "configuration", "lock"):
        if (block, DEFAULT_NAME) not in specs:
            specs[(block, DEFAULT_NAME)] = _spec(
                block, DEFAULT_NAME, {"url": default_url}, "the embedded default"
            )
    if ("secrets", DEFAULT_NAME) not in specs:
        specs[("secrets", DEFAULT_NAME)] = ComponentSpec(
            "secrets", DEFAULT_NAME, "secrets.env", {}, "the embedded default"
        )
    return Settings(
        app_id=capa.get("app_id", ""),
        codec=capa.get("codec", "json"),
        allow_pickle=capa.get("allow_pickle", False),
        retries=capa.get("retries", 3),
        default_url=default_url,
        components=specs,
        sources=tuple(sources),
    )


def _find_file(
    path: str | os.PathLike[str] | None, env: Mapping[str, str], base: Path
) -> Path | None:
    explicit = path if path is not None else env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        file = base / explicit
        if not file.is_file():
            raise SettingsError(
                str(file), "(file)", "the settings file does not exist",
                "create it, or point CAPA_CONFIG at an existing capa.toml",
            )
        return file
    return next((base / n for n in CONFIG_FILES if (base / n).is_file()), None)


def _read_document(file: Path) -> dict[str, Any]:
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".toml":
            document: Any = tomllib.loads(text)
        else:
            document = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(
            str(file), "(syntax)", f"cannot parse: {exc}", "fix the syntax at the place named"
        ) from None
    return _check_document(document, str(file))


def _check_document(document: Any, source: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise SettingsError(
            source, "(top level)", "is not a table of settings",
            "write [capa] and [<block>.<name>] tables",
        )
    unknown = [k for k in document if k != "capa" and k not in BLOCKS]
    if unknown:
        raise SettingsError(
            source, str(unknown[0]), "is not a known section",
            f"use [capa] or one of {', '.join(f'[{b}.<name>]' for b in BLOCKS)}",
        )
    return document


def _capa_table(table: Any, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SettingsError(source, "capa", "must be a table", "write [capa] with keys below it")
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = _CAPA_KEYS.get(key)
        if kind is None:
            raise SettingsError(
                source, f"capa.{key}", "is not a known setting",
                f"use one of {', '.join(sorted(_CAPA_KEYS))}",
            )
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SettingsError(
                source, f"capa.{key}", f"{value!r} is not a {kind.__name__}",
                f"write capa.{key} as a {kind.__name__}",
            )
        out[key] = value
    return out


def _component_tables(block: str, table: Any, source: str) -> dict[tuple[str, str], ComponentSpec]:
    if not isinstance(table, dict):
        raise SettingsError(
            source, block, "must be a table of named components",
            f"write [{block}.<name>] with a url or type below it",
        )
    specs = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise SettingsError(
                source, f"{block}.{name}", "must be a table",
                f'write [{block}.{name}] with url = "..." or type = "..." below it',
            )
        specs[(block, name)] = _spec(block, name, body, source)
    return specs


def _spec(block: str, name: str, body: Mapping[str, Any], source: str) -> ComponentSpec:
    """Build a spec, resolving its type now so a wrong one fails at start-up."""
    metadata = {k: _secret_ref(v) for k, v in body.items()}
    key = f"{block}.{name}"
    type_name = metadata.pop("type", None)
    url = metadata.get("url")
    try:
        if type_name is None:
            if not isinstance(url, str) or not url:
                raise SettingsError(
                    source, key, "has neither type nor url",
                    f'add url = "sqlite:///capa.db" (or another URL) or type = "{block}.<kind>"',
                )
            type_name = type_for_url(block, url)
        elif not isinstance(type_name, str):
            raise SettingsError(source, f"{key}.type", "must be a string", 'e.g. "state.redis"')
        type_name = normalize_type(type_name)
        if "." not in type_name:  # a bare kind under [state.cache]: "redis" is "state.redis"
            type_name = f"{block}.{type_name}"
        cls = resolve(type_name)
    except UnknownComponentType as exc:
        raise SettingsError(source, key, str(exc), "use one of the known types") from None
    if cls.block != block:
        raise SettingsError(
            source, f"{key}.type", f"{type_name!r} is a {cls.block} component, not {block}",
            f"move it under [{cls.block}.{name}] or pick a {block}.* type",
        )
    return ComponentSpec(block, name, type_name, metadata, f"{source} [{key}]")


def _secret_ref(value: Any) -> Any:
    """``{ secret = "db", key = "password", store = "vault" }`` in a file names a secret."""
    if isinstance(value, dict) and "secret" in value:
        name = str(value["secret"])
        return SecretRef(str(value.get("store", DEFAULT_NAME)), name, str(value.get("key", name)))
    return value


def _capa_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _CAPA_KEYS.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is None:
            continue
        var = ENV_PREFIX + key.upper()
        if kind is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise SettingsError(var, key, f"{raw!r} is not a boolean", f"set {var}=true|false")
            out[key] = raw.lower() in {"1", "true", "yes", "on"}
        elif kind is int:
            try:
                out[key] = int(raw)
            except ValueError:
                raise SettingsError(
                    var, key, f"{raw!r} is not an integer", f"set {var}=3"
                ) from None
        else:
            out[key] = raw
    return out


def _components_from_env(env: Mapping[str, str]) -> list[ComponentSpec]:
    """CAPA_<BLOCK>__<NAME>__<KEY>=value, e.g. CAPA_STATE__CACHE__URL=redis://127.0.0.1."""
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = var[len(ENV_PREFIX):].split("__")
        if len(parts) != 3 or parts[0].lower() not in BLOCKS or not all(parts):
            raise SettingsError(
                var, var, "is not of the form CAPA_<BLOCK>__<NAME>__<KEY>",
                f"name it like CAPA_STATE__CACHE__URL; blocks are {', '.join(BLOCKS)}",
            )
        block, name, key = (p.lower() for p in parts)
        tables.setdefault((block, name), {})[key] = value
    return [_spec(b, n, body, "environment") for (b, n), body in sorted(tables.items())]


def _dapr_components(directory: Path) -> list[ComponentSpec]:
    """Dapr component files (apiVersion dapr.io/v1alpha1, kind Component) in ``directory``."""
    specs = []
    for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            documents = [d for d in yaml.safe_load_all(file.read_text(encoding="utf-8")) if d]
        except yaml.YAMLError as exc:
            raise SettingsError(
                str(file), "(syntax)", f"cannot parse: {exc}", "fix the YAML"
            ) from None
        for doc in documents:
            if not isinstance(doc, dict) or doc.get("kind") != "Component":
                continue  # Dapr also keeps Configuration, Subscription... files here
            specs.append(_dapr_component(doc, str(file)))
    return specs


def _dapr_component(doc: Mapping[str, Any], source: str) -> ComponentSpec:
    def table(value: Any, key: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise SettingsError(
                source, key, f"{value!r} is not a mapping", "see a Dapr component file's layout"
            )
        return value

    name = table(doc.get("metadata"), "metadata").get("name")
    spec = table(doc.get("spec"), "spec")
    type_name = spec.get("type")
    if not name or not type_name:
        raise SettingsError(
            source, "metadata.name" if not name else "spec.type", "is missing",
            "a Dapr component needs metadata.name and spec.type (e.g. state.redis)",
        )
    if not isinstance(name, str) or not isinstance(type_name, str):
        raise SettingsError(
            source, "metadata.name" if not isinstance(name, str) else "spec.type",
            "must be a string", "write e.g. name: statestore and type: state.redis",
        )
    secret_store = table(doc.get("auth"), "auth").get("secretStore", DEFAULT_NAME)
    entries = spec.get("metadata") or []
    if not isinstance(entries, list):
        raise SettingsError(
            source, f"{name}.spec.metadata", "must be a list",
            "write entries as - {name: ..., value: ...}",
        )
    metadata: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise SettingsError(
                source, f"{name}.spec.metadata", f"entry {entry!r} has no name",
                "write entries as {name: ..., value: ...}",
            )
        ref = entry.get("secretKeyRef")
        if ref is not None:
            ref = table(ref, f"{name}.spec.metadata.{entry['name']}.secretKeyRef")
            metadata[entry["name"]] = SecretRef(
                str(secret_store), str(ref.get("name", "")),
                str(ref.get("key", ref.get("name", ""))),
            )
        else:
            metadata[entry["name"]] = entry.get("value")
    block = normalize_type(type_name).split(".", 1)[0]
    if block not in BLOCKS:
        raise SettingsError(
            source, f"{name}.spec.type", f"{type_name!r} is not a supported building block",
            f"capa supports {', '.join(BLOCKS)}",
        )
    if "type" in metadata:  # it would be taken for spec.type, or lost
        raise SettingsError(
            source, f"{name}.spec.metadata.type", "clashes with the component's spec.type",
            "remove the metadata entry named type: spec.type says what the component is",
        )
    return _spec(block, str(name), {"type": type_name, **metadata}, source)
