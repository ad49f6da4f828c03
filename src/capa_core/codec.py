"""Value serialization for the client layer: JSON by default, bytes untouched, pickle on request."""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import datetime
import decimal
import enum
import functools
import json
import pickle
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from .errors import SerializationError

T = TypeVar("T")

# Bytes values are stored as this marker plus the raw bytes. No JSON text starts with a NUL, so a
# stored value is unambiguous: an app saving b"1" gets b"1" back, not the integer 1.
_RAW = b"\x00"


class Codec(Protocol):
    """Turns application values into the bytes components store, and back."""

    name: str
    content_type: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


def _to_json_compatible(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class JsonCodec:
    """JSON text for every value but bytes, which pass through as they are."""

    name = "json"
    content_type = "application/json"

    def __init__(self) -> None:
        self._dumps = json.JSONEncoder(
            default=_to_json_compatible, separators=(",", ":"), ensure_ascii=False
        ).encode

    def encode(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return _RAW + value
        try:
            return self._dumps(value).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot encode {type(value).__name__} as JSON ({exc}); pass bytes, a JSON-ready "
                "value, a dataclass or a pydantic model, or configure another codec"
            ) from exc

    def decode(self, data: bytes) -> Any:
        if data[:1] == _RAW:
            return data[1:]
        try:
            return json.loads(data)
        except ValueError:
            # Bytes written by another program straight into the backend: hand them over as bytes.
            return data


class PickleCodec:
    """Python pickle. Only for data from trusted writers: unpickling runs arbitrary code."""

    name = "pickle"
    content_type = "application/x-python-serialize"

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type(value).__name__}: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:  # truncated or foreign bytes: say so in the API's own error
            raise SerializationError(f"cannot unpickle {len(data)} bytes: {exc}") from exc


CODECS: dict[str, type[Codec]] = {"json": JsonCodec, "pickle": PickleCodec}


def codec_by_name(name: str, *, allow_pickle: bool = False) -> Codec:
    """The codec registered under ``name``; pickle must be allowed explicitly."""
    if name == "pickle" and not allow_pickle:
        raise SerializationError(
            "the pickle codec runs arbitrary code on decode and is off by default; "
            "set allow_pickle = true in [capa] settings if every writer is trusted"
        )
    try:
        return CODECS[name]()
    except KeyError:
        raise SerializationError(
            f"unknown codec {name!r}; known codecs: {', '.join(sorted(CODECS))}"
        ) from None


def convert(value: Any, as_type: type[T] | None) -> T:
    """Build ``as_type`` (a dataclass or pydantic model) from a decoded JSON value.

    A dataclass is built field by field from its type hints, so what JSON turned into dicts,
    lists and strings comes back as it was saved: nested dataclasses, datetimes, decimals,
    UUIDs, enums, tuples and sets. Pydantic models validate themselves.
    """
    if as_type is None:
        return cast(T, value)
    try:
        return cast(T, _build(value, as_type, top=True))
    except (TypeError, ValueError) as exc:
        name = getattr(as_type, "__name__", str(as_type))
        raise SerializationError(
            f"cannot build {name} from the stored value ({exc}); read it without as_type to "
            "see what is stored, or give the type it was saved as"
        ) from exc


_ISO = (datetime.datetime, datetime.date, datetime.time)
_FROM_TEXT = (decimal.Decimal, uuid.UUID)


def _build(value: Any, kind: Any, *, top: bool = False) -> Any:
    """``value`` as ``kind``: the types JSON cannot carry are rebuilt, the rest passes as is."""
    if value is None or kind is Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Annotated:
        return _build(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        return _build(value, options[0]) if len(options) == 1 else value
    if origin is not None:
        return _build_generic(value, origin, args)
    if not isinstance(kind, type):
        return value
    validate = getattr(kind, "model_validate", None)
    if callable(validate) and not isinstance(value, kind):
        return validate(value)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        hints, derived = _hints(kind), _derived(kind)  # (derived: init=False, computed again)
        return kind(**{k: _build(v, hints.get(k, Any)) for k, v in value.items()
                       if k not in derived})
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if issubclass(kind, _ISO) and isinstance(value, str):
        return kind.fromisoformat(value)
    make: Callable[..., Any] = kind
    if issubclass(kind, (*_FROM_TEXT, enum.Enum)) or (kind is float and isinstance(value, int)):
        return make(value)
    if top:  # a class of the caller's: built from the value, as the caller asked
        return make(**value) if isinstance(value, dict) else make(value)
    return value


def _build_generic(value: Any, origin: Any, args: tuple[Any, ...]) -> Any:
    """``value`` as ``origin[args]``: a tuple, a set, a list or a mapping of typed items."""
    if not isinstance(origin, type):  # Literal and the like: nothing to rebuild
        return value
    if isinstance(value, list):
        if issubclass(origin, tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_build(v, args[0]) for v in value)
            return tuple(_build(v, a) for v, a in zip(value, args, strict=True)) if args else (
                tuple(value)
            )
        items = [_build(v, args[0]) for v in value] if args else value
        return origin(items) if issubclass(origin, set | frozenset) else items
    if isinstance(value, dict) and issubclass(origin, collections.abc.Mapping) and len(args) == 2:
        return {k: _build(v, args[1]) for k, v in value.items()}
    return value


@functools.cache
def _derived(kind: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(kind) if not f.init)


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    """A dataclass's field types; those that cannot be resolved pass their values as they are."""
    try:
        return typing.get_type_hints(kind)
    except Exception:  # a forward reference to a local class, say
        return {}
