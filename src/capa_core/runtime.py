"""The Runtime: builds components from settings and hands out one client per building block."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .codec import Codec, codec_by_name
from .configuration import Configuration
from .dispatch import Dispatcher, RetryPolicy
from .errors import ComponentNotFound, SecretNotFound, SettingsError
from .lock import Lock
from .pubsub import DEFAULT_LEASE, PubSub
from .registry import resolve
from .secrets import SecretStore
from .settings import DEFAULT_NAME, ComponentSpec, SecretRef, Settings, load_settings
from .spi import (
    Component,
    ConfigurationComponent,
    LockComponent,
    PubSubComponent,
    SecretsComponent,
    StateComponent,
)
from .state import StateStore, key_prefix_for
from .types import Concurrency

if TYPE_CHECKING:
    from .aio import AsyncRuntime

C = TypeVar("C", bound=Component)

# Settings the runtime applies itself; the rest of a component's table goes to the component.
_CLIENT_KEYS = ("key_prefix", "concurrency", "lease")

_default: Runtime | None = None
_default_lock = threading.Lock()


def _client_options(spec: ComponentSpec, options: dict[str, Any]) -> dict[str, Any]:
    """Check the settings the runtime applies itself, so a bad one fails at start-up."""
    if "concurrency" in options:
        try:
            Concurrency(options["concurrency"])
        except ValueError:
            raise SettingsError(
                spec.source, "concurrency", f"{options['concurrency']!r} is not first-write or "
                "last-write", 'write concurrency = "first-write" or "last-write"',
            ) from None
    if "lease" in options:
        raw = options["lease"]
        try:
            options["lease"] = lease = float(raw)
            if isinstance(raw, bool) or not 0 < lease < float("inf"):
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise SettingsError(
                spec.source, "lease", f"{raw!r} is not a positive number of seconds",
                "write lease = 20 (seconds before an unacknowledged message is redelivered)",
            ) from None
    if "key_prefix" in options and not isinstance(options["key_prefix"], str):
        raise SettingsError(
            spec.source, "key_prefix", f"{options['key_prefix']!r} is not a string",
            'write key_prefix = "appid", "none" or a shared prefix',
        )
    return options


class Runtime:
    """Components by building block and name, and the clients bound to them.

    Every component is built (and its settings checked) when the Runtime is made; connections
    open on first use.
    """

    def __init__(self, settings: Settings | None = None, *, app_id: str | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.app_id = app_id if app_id is not None else self.settings.app_id
        self.codec: Codec = codec_by_name(
            self.settings.codec, allow_pickle=self.settings.allow_pickle
        )
        self.dispatcher = Dispatcher(RetryPolicy(attempts=max(1, self.settings.retries)))
        self._client_options: dict[tuple[str, str], dict[str, Any]] = {}
        self._components: dict[tuple[str, str], Component] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        specs = self.settings.components
        # Secret stores first: other components' metadata may reference them.
        for key in sorted(specs, key=lambda k: k[0] != "secrets"):
            self._components[key] = self._build(specs[key])

    @classmethod
    def from_settings(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        app_id: str | None = None,
    ) -> Runtime:
        """A Runtime from capa.toml (or ``path``), CAPA_* variables and Dapr component files."""
        return cls(load_settings(path, env=env, cwd=cwd), app_id=app_id)

    @classmethod
    def from_mapping(
        cls,
        document: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Runtime:
        """A Runtime from a mapping shaped like capa.toml, e.g. {"state": {"cache": {...}}}."""
        return cls(load_settings(document=document, env=env if env is not None else {}, cwd=cwd))

    @classmethod
    def default(cls) -> Runtime:
        """The process-wide Runtime from the working directory's settings, made once."""
        global _default
        with _default_lock:
            if _default is None:
                _default = cls.from_settings()
            return _default

    # --- building ---------------------------------------------------------------------------------

    def _build(self, spec: ComponentSpec) -> Component:
        metadata = {k: self._resolve_secret(spec, k, v) for k, v in spec.metadata.items()}
        self._client_options[(spec.block, spec.name)] = _client_options(
            spec, {k: metadata.pop(k) for k in _CLIENT_KEYS if k in metadata}
        )
        cls = resolve(spec.type)
        return cls(spec.name, metadata, source=spec.source)

    def _resolve_secret(self, spec: ComponentSpec, key: str, value: Any) -> Any:
        if not isinstance(value, SecretRef):
            return value
        store = self._components.get(("secrets", value.store))
        if not isinstance(store, SecretsComponent):
            raise SettingsError(
                spec.source, key, f"references secret store {value.store!r}, which is not "
                "configured", f"add [secrets.{value.store}] or reference an existing store",
            )
        try:
            secret = store.get(value.name)
        except SecretNotFound:
            raise SettingsError(
                spec.source, key, f"secret store {value.store!r} has no secret {value.name!r}",
                f"add the secret {value.name!r} to the store or reference an existing one",
            ) from None
        if value.key not in secret:
            raise SettingsError(
                spec.source, key, f"secret {value.name!r} has no key {value.key!r}",
                f"use one of its keys: {', '.join(sorted(secret))}",
            )
        return secret[value.key]

    def component(self, block: str, name: str, kind: type[C]) -> C:
        found = self._components.get((block, name))
        if not isinstance(found, kind):
            raise ComponentNotFound(block, name, self.settings.names(block))
        return found

    def _client(self, block: str, name: str, make: Any) -> Any:
        client = self._clients.get((block, name))
        if client is None:
            with self._lock:
                client = self._clients.get((block, name))
                if client is None:
                    client = self._clients[(block, name)] = make()
        return client

    def _option(self, block: str, name: str, key: str, default: Any) -> Any:
        return self._client_options.get((block, name), {}).get(key, default)

    # --- clients ----------------------------------------------------------------------------------

    def state(self, name: str = DEFAULT_NAME) -> StateStore:
        """The state client of component ``name``."""

        def make() -> StateStore:
            component = self.component("state", name, StateComponent)
            prefix = key_prefix_for(self.app_id, self._option("state", name, "key_prefix", None))
            concurrency = Concurrency(self._option("state", name, "concurrency", "last-write"))
            return StateStore(
                component, self.dispatcher, self.codec, key_prefix=prefix,
                concurrency=concurrency,
            )

        return self._client("state", name, make)  # type: ignore[no-any-return]

    def pubsub(self, name: str = DEFAULT_NAME) -> PubSub:
        """The pub/sub client of component ``name``."""

        def make() -> PubSub:
            component = self.component("pubsub", name, PubSubComponent)
            lease = component.option("lease", float, DEFAULT_LEASE)
            lease = float(self._option("pubsub", name, "lease", lease))
            return PubSub(
                component, self.dispatcher, self.codec, source=self.app_id or "capa",
                lease=lease,
            )

        return self._client("pubsub", name, make)  # type: ignore[no-any-return]

    def configuration(self, name: str = DEFAULT_NAME) -> Configuration:
        """The configuration client of component ``name``."""

        def make() -> Configuration:
            component = self.component("configuration", name, ConfigurationComponent)
            return Configuration(component, self.dispatcher, app_id=self.app_id)

        return self._client("configuration", name, make)  # type: ignore[no-any-return]

    def lock(self, name: str = DEFAULT_NAME) -> Lock:
        """The lock client of component ``name``."""

        def make() -> Lock:
            component = self.component("lock", name, LockComponent)
            prefix = key_prefix_for(self.app_id, self._option("lock", name, "key_prefix", None))
            return Lock(component, self.dispatcher, key_prefix=prefix)

        return self._client("lock", name, make)  # type: ignore[no-any-return]

    def secrets(self, name: str = DEFAULT_NAME) -> SecretStore:
        """The secrets client of component ``name``."""

        def make() -> SecretStore:
            return SecretStore(self.component("secrets", name, SecretsComponent), self.dispatcher)

        return self._client("secrets", name, make)  # type: ignore[no-any-return]

    @property
    def aio(self) -> AsyncRuntime:
        """The asyncio twin of this runtime (same components, same names)."""
        from .aio import AsyncRuntime

        return self._client("aio", "", lambda: AsyncRuntime(self))  # type: ignore[no-any-return]

    # --- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop subscriptions and close every component."""
        with self._lock:
            for client in self._clients.values():
                close = getattr(client, "close", None)
                if callable(close):
                    close()
            self._clients.clear()
            for component in self._components.values():
                component.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
