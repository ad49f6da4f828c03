"""Capa for Python: standard distributed-capability APIs over pluggable middleware, in-process."""

from .codec import Codec, JsonCodec, PickleCodec
from .configuration import Configuration, ConfigurationSubscription
from .errors import (
    BulkStateError,
    CapaError,
    ComponentNotFound,
    ComponentUnavailable,
    ETagMismatch,
    LockNotAcquired,
    LockNotOwned,
    PublishError,
    SecretNotFound,
    SerializationError,
    SettingsError,
    UnknownComponentType,
    UnsupportedFeature,
)
from .lock import Lock, default_owner
from .pubsub import Message, PubSub, Subscription
from .runtime import Runtime
from .secrets import SecretStore
from .settings import load_settings
from .state import StateStore
from .types import (
    Concurrency,
    ConfigurationChange,
    ConfigurationItem,
    Delete,
    Feature,
    HandlerResult,
    StateItem,
    UnlockStatus,
    Upsert,
)

__all__ = [
    "BulkStateError",
    "CapaError",
    "Codec",
    "ComponentNotFound",
    "ComponentUnavailable",
    "Concurrency",
    "Configuration",
    "ConfigurationChange",
    "ConfigurationItem",
    "ConfigurationSubscription",
    "Delete",
    "ETagMismatch",
    "Feature",
    "HandlerResult",
    "JsonCodec",
    "Lock",
    "LockNotAcquired",
    "LockNotOwned",
    "Message",
    "PickleCodec",
    "PubSub",
    "PublishError",
    "Runtime",
    "SecretNotFound",
    "SecretStore",
    "SerializationError",
    "SettingsError",
    "StateItem",
    "StateStore",
    "Subscription",
    "UnknownComponentType",
    "UnlockStatus",
    "UnsupportedFeature",
    "Upsert",
    "default_owner",
    "load_settings",
]
