"""Flask's Config plus ``from_capa``: values from a capa configuration store, updated live.

    from capa_compat.flask import Flask               # was: from flask import Flask

    app = Flask(__name__)
    app.config.from_object("settings")                 # everything flask.Config does, unchanged
    app.config.from_capa("app", group="web", label="prod", prefix="WEB_")

``from_capa`` loads the items of one group and label of a capa configuration component (the keys
starting with ``prefix``, which is cut off), and unless ``subscribe=False`` keeps them current:
a change in the store reaches ``app.config`` as soon as the component pushes it (within 100 ms on
the components of capa_core), without a restart.

Values: an item's content is parsed as JSON when it parses (``"5"`` -> 5, ``"true"`` -> True,
``'{"a": 1}'`` -> a dict) and is taken as the plain string otherwise. An item tagged
``content-type: application/json`` must parse, and a ``loads`` function given by the caller must
succeed: otherwise loading fails naming the key (at start-up) or the change is logged and the
last value kept (live).

Reads stay plain dict reads: ``app.config[key]`` costs what it costs on flask.Config. Changes are
applied under a lock, one batch at a time, each key replaced in one assignment.

Failures: a store that is down at start-up raises ConfigurationUnavailable naming the component,
where it is configured and the fix. A store that goes down later never blanks the config: the
last known values stay, the component's watcher reconnects, and ``resync`` (seconds) reloads
periodically and logs when the store is unreachable and when it is back. A key deleted in the
store gives back the value it had before ``from_capa`` loaded it (or leaves the config).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import flask

from capa_core import (
    CapaError,
    ComponentNotFound,
    Configuration,
    ConfigurationChange,
    ConfigurationItem,
    Runtime,
    UnsupportedFeature,
)

__all__ = [
    "Config",
    "ConfigChange",
    "ConfigValueError",
    "ConfigurationUnavailable",
    "Flask",
]

log = logging.getLogger("capa_compat.flask")

_MISSING: Any = object()
_JSON_TYPES = {"application/json", "json"}


class ConfigValueError(ValueError):
    """A configuration item whose content does not parse; names the key and the fix."""


class ConfigurationUnavailable(RuntimeError):
    """The configuration store could not be read when the app loaded it."""


@dataclass(frozen=True)
class ConfigChange:
    """One key of app.config changed by the store: its new and previous value."""

    key: str
    value: Any  # the new value; the restored value (or None) when deleted
    previous: Any
    deleted: bool = False


ChangeHook = Callable[["Config", list[ConfigChange]], None]


def _content_type(item: ConfigurationItem) -> str:
    for mapping in (item.tags, item.metadata):
        for name in ("content-type", "contentType", "content_type"):
            if name in mapping:
                return str(mapping[name]).lower()
    return ""


def parse_content(item: ConfigurationItem, loads: Callable[[str], Any] | None = None) -> Any:
    """The value of an item: ``loads(content)``, else JSON when it parses, else the string."""
    where = f"configuration key {item.key!r} (group {item.group!r}, label {item.label!r})"
    if loads is not None:
        try:
            return loads(item.content)
        except Exception as exc:
            raise ConfigValueError(
                f"{where}: {getattr(loads, '__name__', loads)!s} cannot parse {item.content!r}: "
                f"{exc}. Fix: store a value it accepts"
            ) from exc
    try:
        return json.loads(item.content)
    except ValueError as exc:
        if _content_type(item) in _JSON_TYPES:
            raise ConfigValueError(
                f"{where} is tagged as JSON but does not parse: {exc}. Fix: store valid JSON, "
                "or drop the content-type tag to take the text as a string"
            ) from exc
        return item.content


class _Source:
    """One from_capa call: where the values come from and how to keep them current."""

    def __init__(
        self,
        config: Config,
        client: Configuration,
        *,
        group: str,
        label: str,
        prefix: str,
        keys: Sequence[str],
        loads: Callable[[str], Any] | None,
        on_change: ChangeHook | None,
    ) -> None:
        self.config = config
        self.client = client
        self.group, self.label, self.prefix = group, label, prefix
        self.keys = [prefix + k if not k.startswith(prefix) else k for k in keys]
        self.loads = loads
        self.on_change = on_change
        self.subscription: Any = None
        self.reachable = True
        self._stop = threading.Event()
        self._resync: threading.Thread | None = None

    def describe(self) -> str:
        component = self.client.component
        return f"configuration component {self.client.name!r} ({component.source})"

    def name_of(self, key: str) -> str | None:
        if not key.startswith(self.prefix):
            return None
        return key[len(self.prefix):] or None

    def fetch(self) -> dict[str, Any]:
        """The current values of this source by config key; parse errors raise."""
        items = self.client.get(self.keys, group=self.group, label=self.label)
        values = {}
        for item in items:
            name = self.name_of(item.key)
            if name is not None:
                values[name] = parse_content(item, self.loads)
        return values

    def on_changes(self, changes: list[ConfigurationChange]) -> None:
        updates: dict[str, Any] = {}
        deleted: list[str] = []
        for change in changes:
            name = self.name_of(change.item.key)
            if name is None:
                continue
            if change.deleted:
                deleted.append(name)
                updates.pop(name, None)
                continue
            try:
                updates[name] = parse_content(change.item, self.loads)
            except ConfigValueError as exc:
                log.error("%s; keeping the last value of %s", exc, name)
                continue
            if name in deleted:
                deleted.remove(name)
        self.config._apply(updates, deleted, self.on_change, source=self)

    def resync(self) -> bool:
        """Reload every value now; False (and the values kept) when the store is unreachable."""
        try:
            values = self.fetch()
        except ConfigValueError as exc:
            log.error("%s; keeping the last known values", exc)
            return False
        except Exception as exc:
            if self.reachable:
                log.warning(
                    "%s is unreachable (%s); keeping the last known values", self.describe(), exc
                )
            self.reachable = False
            return False
        if not self.reachable:
            log.warning("%s is reachable again; values reloaded", self.describe())
        self.reachable = True
        known = set(self.config._capa_owned.get(id(self), ()))
        self.config._apply(values, sorted(known - set(values)), self.on_change, source=self)
        return True

    def start_resync(self, interval: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.resync()

        self._resync = threading.Thread(target=loop, name="capa-flask-resync", daemon=True)
        self._resync.start()

    def close(self) -> None:
        self._stop.set()
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if self._resync is not None:
            self._resync.join(timeout=5)


class Config(flask.Config):
    """flask.Config, plus ``from_capa`` for values from a capa configuration store."""

    def __init__(self, root_path: Any, defaults: dict[str, Any] | None = None) -> None:
        super().__init__(root_path, defaults)
        self._capa_lock = threading.RLock()
        self._capa_sources: list[_Source] = []
        self._capa_shadowed: dict[str, Any] = {}  # values from_capa replaced, per key
        self._capa_owned: dict[int, set[str]] = {}  # keys each source wrote

    def from_capa(
        self,
        component: str | Configuration = "default",
        *,
        group: str = "",
        label: str = "",
        prefix: str = "",
        keys: Sequence[str] = (),
        subscribe: bool = True,
        on_change: ChangeHook | None = None,
        loads: Callable[[str], Any] | None = None,
        runtime: Runtime | None = None,
        resync: float | None = None,
    ) -> bool:
        """Load values from a capa configuration component and keep them current.

        :param component: the component's name in the runtime's settings, or a Configuration
            client.
        :param group: the configuration group to read; ``label`` likewise (e.g. "prod").
        :param prefix: only keys starting with it are loaded, with it cut off.
        :param keys: only these keys (with or without the prefix); all when empty.
        :param subscribe: keep the values current as the store changes.
        :param on_change: ``hook(config, changes)`` called after each applied change, with a
            list of ConfigChange.
        :param loads: parses an item's content; default JSON when it parses, else the string.
        :param runtime: the capa Runtime; default ``Runtime.default()``.
        :param resync: reload everything every so many seconds as well (a safety net for stores
            that were unreachable for a while); None: push only.
        :return: True, like the other ``from_*`` methods.
        """
        client = self._capa_client(component, runtime)
        source = _Source(
            self, client, group=group, label=label, prefix=prefix, keys=keys, loads=loads,
            on_change=on_change,
        )
        try:
            values = source.fetch()
        except ConfigValueError:
            raise
        except CapaError as exc:
            raise ConfigurationUnavailable(
                f"Config.from_capa: {source.describe()} could not be read: {exc}. Fix: start "
                f"the store or correct its settings in {client.component.source}, or load the "
                "configuration from elsewhere until it is up"
            ) from exc
        if subscribe:
            try:
                source.subscription = client.subscribe(
                    source.keys, source.on_changes, group=group, label=label
                )
            except UnsupportedFeature as exc:
                raise ConfigurationUnavailable(
                    f"Config.from_capa: {source.describe()} cannot push changes ({exc}). Fix: "
                    "pass subscribe=False (values load once), or use a component that watches"
                ) from exc
        with self._capa_lock:
            self._capa_sources.append(source)
            self._apply(values, [], None, source=source)
        if resync is not None:
            source.start_resync(resync)
        return True

    def refresh_capa(self) -> bool:
        """Reload every capa source now; False when one could not be read (values are kept)."""
        return all([source.resync() for source in list(self._capa_sources)])

    def close_capa(self) -> None:
        """Stop following the stores (the values stay)."""
        with self._capa_lock:
            sources, self._capa_sources = self._capa_sources, []
        for source in sources:
            source.close()

    @staticmethod
    def _capa_client(component: str | Configuration, runtime: Runtime | None) -> Configuration:
        if isinstance(component, Configuration):
            return component
        runtime = runtime if runtime is not None else Runtime.default()
        try:
            return runtime.configuration(component)
        except ComponentNotFound as exc:
            raise ConfigurationUnavailable(
                f"Config.from_capa(component={component!r}): {exc}"
            ) from exc

    def _apply(
        self,
        updates: dict[str, Any],
        deleted: Sequence[str],
        hook: ChangeHook | None,
        *,
        source: _Source | None = None,
    ) -> list[ConfigChange]:
        changes: list[ConfigChange] = []
        with self._capa_lock:
            owned = self._capa_owned.setdefault(id(source), set()) if source else None
            for key, value in updates.items():
                previous = self.get(key, _MISSING)
                if key not in self._capa_shadowed:
                    self._capa_shadowed[key] = previous
                if previous is not _MISSING and previous == value and type(previous) is type(value):
                    continue
                self[key] = value
                if owned is not None:
                    owned.add(key)
                changes.append(ConfigChange(key, value, None if previous is _MISSING else previous))
            for key in deleted:
                previous = self.get(key, _MISSING)
                restored = self._capa_shadowed.pop(key, _MISSING)
                if owned is not None:
                    owned.discard(key)
                if restored is _MISSING:
                    self.pop(key, None)
                else:
                    self[key] = restored
                if previous is not _MISSING:
                    changes.append(ConfigChange(
                        key, None if restored is _MISSING else restored, previous, deleted=True
                    ))
        if hook is not None and changes:
            try:
                hook(self, changes)
            except Exception:  # the app's hook must not stop later updates
                log.exception("from_capa on_change hook %r failed", hook)
        return changes


class Flask(flask.Flask):
    """flask.Flask whose ``app.config`` is capa_compat.flask.Config (so it has from_capa)."""

    config_class = Config
