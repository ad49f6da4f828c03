"""Environment-variable components: secrets and read-only configuration.

Secrets (``secrets.env``, the default secret store): each variable is a secret named like the
variable, ``get("DB_PASSWORD") -> {"DB_PASSWORD": "..."}``; ``prefix`` limits and strips names.
Configuration (``configuration.env``): variables ``<prefix><KEY>`` become items with key ``key``
(lower-cased, ``__`` turned into ``.``); read only, in group "" and label "".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SecretNotFound
from ..spi import ConfigurationComponent, SecretsComponent
from ..types import ConfigurationItem


class EnvSecrets(SecretsComponent):
    kind = "env"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.prefix = self.option("prefix", str, "")

    def get(self, name: str) -> dict[str, str]:
        value = os.environ.get(self.prefix + name)
        if value is None:
            raise SecretNotFound(self.name, name)
        return {name: value}

    def names(self) -> list[str]:
        cut = len(self.prefix)
        return sorted(k[cut:] for k in os.environ if k.startswith(self.prefix) and k[cut:])


class EnvConfiguration(ConfigurationComponent):
    kind = "env"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.prefix = self.option("prefix", str, "")

    def _items(self) -> dict[str, str]:
        cut = len(self.prefix)
        return {
            k[cut:].lower().replace("__", "."): v
            for k, v in os.environ.items()
            if k.startswith(self.prefix) and k[cut:]
        }

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        if group or label:
            return []
        items = self._items()
        wanted = keys or sorted(items)
        return [ConfigurationItem(k, items[k]) for k in wanted if k in items]
