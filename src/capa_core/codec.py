"""Value serialization for the client layer: JSON by default, bytes untouched, pickle on request."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import pickle
import uuid
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
    """Build ``as_type`` (a dataclass or pydantic model) from a decoded JSON value."""
    if as_type is None or isinstance(value, as_type):
        return cast(T, value)
    validate = getattr(as_type, "model_validate", None)
    if callable(validate):
        return cast(T, validate(value))
    if isinstance(value, dict):
        return as_type(**value)
    return as_type(value)  # type: ignore[call-arg]
