"""The configuration API: read, write and watch configuration items of one store."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from .dispatch import Dispatcher
from .spi import ConfigurationComponent
from .types import ConfigurationChange, ConfigurationItem, Feature

log = logging.getLogger("capa_core.configuration")

ChangeHandler = Callable[[list[ConfigurationChange]], None]


class ConfigurationSubscription:
    """Pushes the changes of some keys (all keys when none were named) until ``close()``."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop: Callable[[], None] | None = stop

    @property
    def active(self) -> bool:
        return self._stop is not None

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> ConfigurationSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Configuration:
    """Configuration items of one component, scoped to this runtime's app id."""

    def __init__(
        self, component: ConfigurationComponent, dispatcher: Dispatcher, *, app_id: str = ""
    ) -> None:
        self.component = component
        self.name = component.name
        self.app_id = app_id
        self._call = dispatcher.call

    def ping(self) -> None:
        """Return when the component's middleware answers; ComponentUnavailable when it does not."""
        self._call(self.component, "ping", self.component.ping)

    def get(
        self, keys: Sequence[str] = (), *, group: str = "", label: str = ""
    ) -> list[ConfigurationItem]:
        """The items named by ``keys`` that exist; every item when ``keys`` is empty."""
        if isinstance(keys, str):
            keys = [keys]
        return self._call(
            self.component, "get", self.component.load, self.app_id, group, label, list(keys)
        )

    def get_map(
        self, keys: Sequence[str] = (), *, group: str = "", label: str = ""
    ) -> dict[str, str]:
        """Like ``get``, as {key: content}."""
        return {item.key: item.content for item in self.get(keys, group=group, label=label)}

    def save(
        self,
        items: Iterable[ConfigurationItem] | Mapping[str, str],
        *,
        group: str = "",
        label: str = "",
    ) -> None:
        """Write items; a mapping of key to content is written into ``group`` and ``label``."""
        self.component.require(Feature.WRITE)
        if isinstance(items, Mapping):
            items = [ConfigurationItem(k, v, group, label) for k, v in items.items()]
        finished = list(items)
        for item in finished:
            if not isinstance(item.content, str):
                raise TypeError(
                    f"configuration content is text; {item.key!r} has "
                    f"{type(item.content).__name__}: convert it (json.dumps, str) before saving"
                )
        self._call(self.component, "save", self.component.store, self.app_id, finished)

    def delete(self, keys: Sequence[str], *, group: str = "", label: str = "") -> None:
        self.component.require(Feature.WRITE)
        if isinstance(keys, str):
            keys = [keys]
        self._call(
            self.component, "delete", self.component.remove, self.app_id, group, label, list(keys)
        )

    def subscribe(
        self,
        keys: Sequence[str],
        handler: ChangeHandler,
        *,
        group: str | None = None,
        label: str | None = None,
    ) -> ConfigurationSubscription:
        """Call ``handler`` with the changes (and deletes) of ``keys``; every key when empty.

        ``group`` and ``label`` narrow the subscription; None means any.
        """
        self.component.require(Feature.WATCH)
        wanted = frozenset([keys] if isinstance(keys, str) else keys)

        def listener(changes: list[ConfigurationChange]) -> None:
            mine = [
                c for c in changes
                if (not wanted or c.item.key in wanted)
                and (group is None or c.item.group == group)
                and (label is None or c.item.label == label)
            ]
            if mine:
                try:
                    handler(mine)
                except Exception:  # one faulty handler must not starve the others
                    log.exception("configuration handler %r failed", handler)

        stop = self._call(
            self.component, "subscribe", self.component.add_listener, self.app_id, listener
        )
        return ConfigurationSubscription(stop)
