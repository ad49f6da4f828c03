"""A dynaconf loader (LOADERS_FOR_DYNACONF entry) reading a capa configuration component, live.

Settings it reads (all optional but the component; as keyword arguments of
capa_compat.dynaconf.Dynaconf they are spelled capa_component=..., capa_group=...; as environment
variables CAPA_COMPONENT_FOR_DYNACONF=...):

  CAPA_COMPONENT_FOR_DYNACONF  name of the configuration component in the capa runtime
  CAPA_GROUP_FOR_DYNACONF      configuration group to read (default "")
  CAPA_LABEL_FOR_DYNACONF      one label to read; by default the labels follow dynaconf's
                               environments: "" (unlabelled, the base), then "default", the
                               current environment(s) and "global", each overriding the previous
  CAPA_PREFIX_FOR_DYNACONF     only keys starting with it, with it cut off (default "")
  CAPA_LIVE_FOR_DYNACONF       follow changes in the store (default true)
  CAPA_RUNTIME_FOR_DYNACONF    path of a capa.toml; default the process's Runtime.default()

Values are parsed like dynaconf's environment variables (TOML, and the @int/@json/... markers),
so a value stored in capa means what it would mean in an env var. Where the loader sits in the
loader list decides what wins: last (the default) puts capa over files and env vars.

Live: one subscription per settings object applies changes as they are pushed: the effective
value of a key is the one of its highest label; a change that breaks a validator is rolled back
and logged; a key deleted from every label gets back the value it had before capa set it. A store
that is down at start-up fails with ConfigurationUnavailable; one that fails later (during
reload()) leaves the last known values in place and logs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import threading
import types
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from dynaconf.loaders.base import SourceMetadata
from dynaconf.utils import build_env_list, upperfy
from dynaconf.utils.parse_conf import DynaconfParseError, parse_conf_data, true_values
from dynaconf.validator import ValidationError

from capa_core import (
    CapaError,
    ComponentNotFound,
    Configuration,
    ConfigurationChange,
    Runtime,
    UnsupportedFeature,
)

IDENTIFIER = "capa"
MODULE = __name__
OPTIONS = ("COMPONENT", "GROUP", "LABEL", "PREFIX", "LIVE", "RUNTIME")

log = logging.getLogger("capa_compat.dynaconf")

_MISSING: Any = object()


class ConfigurationUnavailable(RuntimeError):
    """The capa configuration store could not be read when the settings were first loaded."""


class ConfigValueError(DynaconfParseError):
    """A value in the capa store that does not parse; names the key and where it lives."""


# --- runtimes: settings values must stay plain data (dynaconf deep-copies them), so a Runtime
# object given in code is kept here and the settings hold its token.

_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()
_tokens = itertools.count(1)


def runtime_token(runtime: Runtime) -> str:
    with _runtimes_lock:
        for token, known in _runtimes.items():
            if known is runtime:
                return token
        token = f"capa-runtime:{next(_tokens)}"
        _runtimes[token] = runtime
        return token


def _runtime(option: Any) -> Runtime:
    if option in (None, ""):
        return Runtime.default()
    if isinstance(option, Runtime):
        return option
    text = str(option)
    with _runtimes_lock:
        runtime = _runtimes.get(text)
        if runtime is None:
            try:
                runtime = _runtimes[text] = Runtime.from_settings(os.path.abspath(text))
            except CapaError as exc:
                raise ConfigurationUnavailable(
                    f"CAPA_RUNTIME_FOR_DYNACONF = {text!r}: {exc}"
                ) from exc
        return runtime


def option(
    obj: Any, name: str, default: Any = None, bound: Mapping[str, Any] | None = None
) -> Any:
    """A capa setting: bound to the loader, else from the settings object, else the environment."""
    if bound and bound.get(name) is not None:
        return bound[name]
    key = f"CAPA_{name}_FOR_DYNACONF"
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        value = os.environ.get(key, default)
    return value


# --- loaders bound to options ---------------------------------------------------------------------
# Dynaconf names loaders by module path and copies only its own settings into from_env() objects,
# so options given in code travel in the loader's name: one module object per distinct set of
# options, registered in sys.modules, whose load() carries them.

_bound: dict[tuple[tuple[str, str], ...], str] = {}


def bound_loader(options: Mapping[str, Any]) -> str:
    """The module path of a loader with ``options`` (COMPONENT, GROUP...) built in."""
    frozen = tuple(sorted((k, str(v)) for k, v in options.items() if v is not None))
    with _runtimes_lock:
        name = _bound.get(frozen)
        if name is None:
            name = f"{MODULE}_bound_{len(_bound) + 1}"
            module = types.ModuleType(name, f"capa loader bound to {dict(frozen)}")
            module.IDENTIFIER = IDENTIFIER  # type: ignore[attr-defined]
            module.OPTIONS = dict(frozen)  # type: ignore[attr-defined]
            module.load = functools.partial(load, options=dict(frozen))  # type: ignore[attr-defined]
            sys.modules[name] = module
            _bound[frozen] = name
        return name


def is_capa_loader(name: str) -> bool:
    return name == MODULE or name.startswith(f"{MODULE}_bound_")


# --- one live source per settings object ----------------------------------------------------------


class _Source:
    """What the loader knows about one settings object: its store, labels and last values."""

    def __init__(self, obj: Any, options: Mapping[str, Any] | None) -> None:
        self.obj_ref = weakref.ref(obj)
        self.options = options
        self.component = str(option(obj, "COMPONENT", bound=options))
        self.group = str(option(obj, "GROUP", "", options) or "")
        self.prefix = str(option(obj, "PREFIX", "", options) or "")
        self.live = str(option(obj, "LIVE", "true", options)).strip().lower() in true_values
        runtime = _runtime(option(obj, "RUNTIME", bound=options))
        try:
            self.client: Configuration = runtime.configuration(self.component)
        except ComponentNotFound as exc:
            raise ConfigurationUnavailable(
                f"CAPA_COMPONENT_FOR_DYNACONF = {self.component!r}: {exc}"
            ) from exc
        self.labels: list[str] = []
        self.contents: dict[str, dict[str, str]] = {}  # label -> key (prefix cut) -> content
        self.shadowed: dict[str, Any] = {}  # values capa replaced, for when capa lets go
        self.loaded = False
        self.subscription: Any = None
        self.lock = threading.RLock()

    def describe(self) -> str:
        return f"capa configuration component {self.component!r} ({self.client.component.source})"

    def name_of(self, key: str) -> str | None:
        if not key.startswith(self.prefix):
            return None
        return key[len(self.prefix):] or None

    def fetch(self, labels: Sequence[str], key: str | None) -> dict[str, dict[str, str]]:
        keys = [self.prefix + key] if key else []
        found: dict[str, dict[str, str]] = {}
        for label in labels:
            items = self.client.get(keys, group=self.group, label=label)
            found[label] = {
                name: item.content for item in items if (name := self.name_of(item.key))
            }
        return found

    def effective(self, name: str) -> tuple[str, str] | None:
        """(label, content) of ``name`` from the highest label holding it."""
        for label in reversed(self.labels):
            content = self.contents.get(label, {}).get(name)
            if content is not None:
                return label, content
        return None

    def parse(self, obj: Any, name: str, label: str, content: str) -> Any:
        try:
            return parse_conf_data(content, tomlfy=True, box_settings=obj)
        except Exception as exc:
            raise ConfigValueError(
                f"capa configuration key {self.prefix + name!r} (group {self.group!r}, label "
                f"{label!r}) of {self.describe()} does not parse: {exc}. Fix: store a value "
                "dynaconf can read (TOML, or a @marker such as @int 5)"
            ) from exc

    def metadata(self, label: str) -> SourceMetadata:
        return SourceMetadata(IDENTIFIER, self.component, label or "global")

    # --- live changes ----------------------------------------------------------------------------

    def subscribe(self) -> None:
        if self.subscription is not None or not self.live:
            return
        try:
            self.subscription = self.client.subscribe([], self.on_changes, group=self.group)
        except UnsupportedFeature as exc:
            raise ConfigurationUnavailable(
                f"{self.describe()} cannot push changes ({exc}). Fix: set "
                "CAPA_LIVE_FOR_DYNACONF=false (values load once), or use a component that watches"
            ) from exc

    def on_changes(self, changes: list[ConfigurationChange]) -> None:
        obj = self.obj_ref()
        if obj is None:
            self.close()
            return
        with self.lock:
            touched: set[str] = set()
            for change in changes:
                item = change.item
                name = self.name_of(item.key)
                if name is None or item.label not in self.labels:
                    continue
                contents = self.contents.setdefault(item.label, {})
                if change.deleted:
                    contents.pop(name, None)
                else:
                    contents[name] = item.content
                touched.add(name)
            if touched:
                self.apply(obj, sorted(touched))

    def apply(self, obj: Any, names: Sequence[str]) -> None:
        """Set each name to its effective value; roll back the lot if a validator objects."""
        before = {name: obj.get(name, _MISSING) for name in names}
        try:
            for name in names:
                found = self.effective(name)
                if found is None:
                    self.restore(obj, name)
                else:
                    label, content = found
                    value = self.parse(obj, name, label, content)
                    obj.set(name, value, loader_identifier=self.metadata(label), validate=False)
            obj.validators.validate(only=list(names))
        except (ConfigValueError, ValidationError) as exc:
            log.error("%s; keeping the previous values of %s", exc, ", ".join(names))
            for name, value in before.items():
                if value is _MISSING:
                    obj.unset(name, force=True)
                else:
                    obj.set(name, value, validate=False)

    def restore(self, obj: Any, name: str) -> None:
        previous = self.shadowed.pop(upperfy(name), _MISSING)
        if previous is _MISSING:
            obj.unset(name, force=True)
        else:
            obj.set(name, previous, validate=False)

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None


_sources: dict[int, _Source] = {}
# Reentrant: a settings object collected while source_for holds the lock runs its finalizer
# (forget, below) on the same thread, which takes the lock again.
_sources_lock = threading.RLock()


def source_for(obj: Any, options: Mapping[str, Any] | None) -> _Source:
    """The live source of a settings object, made on first load."""
    with _sources_lock:
        source = _sources.get(id(obj))
        if source is not None and source.obj_ref() is obj:
            return source
        source = _sources[id(obj)] = _Source(obj, options)

    def forget(key: int = id(obj), source: _Source = source) -> None:
        source.close()
        with _sources_lock:
            if _sources.get(key) is source:
                del _sources[key]

    weakref.finalize(obj, forget)
    return source


def labels_for(obj: Any, env: str | None, options: Mapping[str, Any] | None) -> list[str]:
    label = option(obj, "LABEL", bound=options)
    if label is not None:
        return [str(label)]
    if not obj.get("ENVIRONMENTS_FOR_DYNACONF"):
        return [""]
    return ["", *build_env_list(obj, env or obj.current_env)]


def load(
    obj: Any,
    env: str | None = None,
    silent: bool = True,
    key: str | None = None,
    validate: bool = False,
    *,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Layer the capa store's values over what earlier loaders set; follow changes."""
    if not option(obj, "COMPONENT", bound=options):
        return
    source = source_for(obj, options)
    with source.lock:
        labels = labels_for(obj, env, options)
        try:
            found = source.fetch(labels, key)
        except CapaError as exc:
            if not source.loaded:
                # Down at start-up: fail now, not later with settings silently missing. This
                # ignores dynaconf's silent flag, which is about absent files.
                raise ConfigurationUnavailable(
                    f"{source.describe()}, named by CAPA_COMPONENT_FOR_DYNACONF, could not be "
                    f"read: {exc}. Fix: start the store or correct its settings in "
                    f"{source.client.component.source}, or unset CAPA_COMPONENT_FOR_DYNACONF "
                    "(capa_component=) to load the settings without it"
                ) from exc
            log.warning(
                "%s is unreachable (%s); keeping the last known values", source.describe(), exc
            )
            found = {label: dict(source.contents.get(label, {})) for label in labels}
            if key:
                found = {lb: {k: v for k, v in c.items() if k == key} for lb, c in found.items()}
        if key is None:
            source.labels = labels
            source.contents = found
        else:
            for label, contents in found.items():
                source.contents.setdefault(label, {}).update(contents)
        for label in labels:
            data = {}
            for name, content in found.get(label, {}).items():
                upper = upperfy(name)
                if upper not in source.shadowed:
                    source.shadowed[upper] = obj.get(name, _MISSING)
                data[name] = source.parse(obj, name, label, content)
            if data:
                obj.update(data, loader_identifier=source.metadata(label), validate=validate)
        source.loaded = True
        source.subscribe()
