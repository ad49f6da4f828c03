"""The secrets API: read named secrets from one secret store."""

from __future__ import annotations

from .dispatch import Dispatcher
from .spi import SecretsComponent


class SecretStore:
    """Secrets of one secrets component."""

    def __init__(self, component: SecretsComponent, dispatcher: Dispatcher) -> None:
        self.component = component
        self.name = component.name
        self._call = dispatcher.call

    def ping(self) -> None:
        """Return when the component's middleware answers; ComponentUnavailable when it does not."""
        self._call(self.component, "ping", self.component.ping)

    def get(self, name: str) -> dict[str, str]:
        """The secret ``name`` as {key: value}; SecretNotFound when absent."""
        return self._call(self.component, "get", self.component.get, name)

    def bulk_get(self) -> dict[str, dict[str, str]]:
        """Every secret of the store."""
        return self._call(self.component, "bulk_get", self.component.bulk_get)
