"""Value serialization: JSON by default, bytes untouched, models welcome, pickle only on request."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pickle
import uuid
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capa_core import JsonCodec, PickleCodec, Runtime, SerializationError
from capa_core.codec import CODECS, codec_by_name, convert


@dataclasses.dataclass
class Address:
    street: str
    zip: str


@dataclasses.dataclass
class Customer:
    name: str
    address: Address
    tags: list[str] = dataclasses.field(default_factory=list)


class Order(pydantic.BaseModel):
    id: int
    placed: datetime.datetime
    items: list[str]
    total: decimal.Decimal


class Color(enum.Enum):
    RED = "red"


class Opaque:
    """Neither JSON nor a model: the JSON codec must refuse it by name."""


@pytest.fixture
def codec() -> JsonCodec:
    return JsonCodec()


# --- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**70, 1.5, True, False, None, "", "text", "日本語 \U0001f600", [], {},
     [1, [2, [3]]], {"a": {"b": None}}, '{"looks": "like json"}', "1"],
)
def test_json_values_round_trip(codec: JsonCodec, value: Any) -> None:
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert codec.decode(data) == value
    assert type(codec.decode(data)) is type(value)


def test_json_is_compact_utf8_text(codec: JsonCodec) -> None:
    assert codec.encode({"a": [1, 2], "é": "ü"}) == '{"a":[1,2],"é":"ü"}'.encode()
    assert codec.content_type == "application/json"
    assert codec.name == "json"


@pytest.mark.parametrize("value", [b"", b"1", b'"text"', b"\x00", b"\x00\x00x", bytes(range(256))])
def test_bytes_pass_through_and_stay_bytes(codec: JsonCodec, value: bytes) -> None:
    data = codec.encode(value)
    assert data.endswith(value)  # stored as they are, behind a one-byte marker
    assert codec.decode(data) == value
    assert isinstance(codec.decode(data), bytes)


def test_bytes_written_by_another_program_come_back_as_bytes(codec: JsonCodec) -> None:
    assert codec.decode(b"\xff\xfenot json") == b"\xff\xfenot json"
    assert codec.decode(b"plain text") == b"plain text"
    assert codec.decode(b"42") == 42  # valid JSON from elsewhere is read as JSON


def test_nested_bytes_become_base64_objects(codec: JsonCodec) -> None:
    assert json.loads(codec.encode({"blob": b"\x01\x02"})) == {"blob": {"$base64": "AQI="}}
    assert json.loads(codec.encode([bytearray(b"x"), memoryview(b"y")])) == [
        {"$base64": "eA=="}, {"$base64": "eQ=="},
    ]


def test_common_python_types_become_json(codec: JsonCodec) -> None:
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "when": moment, "day": moment.date(), "time": moment.time(), "id": ident,
        "price": decimal.Decimal("9.99"), "color": Color.RED, "set": {1}, "tuple": (1, 2),
        "frozen": frozenset(["x"]),
    }
    assert codec.decode(codec.encode(value)) == {
        "when": "2024-05-06T07:08:09+00:00", "day": "2024-05-06", "time": "07:08:09",
        "id": str(ident), "price": "9.99", "color": "red", "set": [1], "tuple": [1, 2],
        "frozen": ["x"],
    }


def test_dataclasses_encode_as_objects_and_convert_back(codec: JsonCodec) -> None:
    customer = Customer("Ada", Address("Main St 1", "12345"), ["vip"])
    decoded = codec.decode(codec.encode(customer))
    assert decoded == {"name": "Ada", "address": {"street": "Main St 1", "zip": "12345"},
                       "tags": ["vip"]}
    assert convert(codec.decode(codec.encode(Address("a", "b"))), Address) == Address("a", "b")


def test_pydantic_models_encode_as_json_and_validate_back(codec: JsonCodec) -> None:
    order = Order(id=1, placed=datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
                  items=["a"], total=decimal.Decimal("3.50"))
    decoded = codec.decode(codec.encode(order))
    assert decoded == {"id": 1, "placed": "2024-01-02T00:00:00Z", "items": ["a"],
                       "total": "3.50"}
    assert convert(decoded, Order) == order


def test_convert_leaves_values_of_the_right_type_alone() -> None:
    address = Address("a", "b")
    assert convert(address, Address) is address
    assert convert({"x": 1}, None) == {"x": 1}
    assert convert("5", int) == 5


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(Opaque(), "Opaque"), ({"nested": [Opaque()]}, "dict"), (Address, "type"),
     (lambda: 1, "function"), ({1j}, "set")],
)
def test_unencodable_values_raise_serialization_error_naming_the_type(
    codec: JsonCodec, value: Any, type_name: str
) -> None:
    with pytest.raises(SerializationError) as raised:
        codec.encode(value)
    assert f"cannot encode {type_name} as JSON" in str(raised.value)
    assert isinstance(raised.value, TypeError)


def test_circular_values_raise_serialization_error(codec: JsonCodec) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="list"):
        codec.encode(loop)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_value_round_trips(value: Any) -> None:
    codec = JsonCodec()
    assert codec.decode(codec.encode(value)) == value


@given(st.binary())
def test_any_bytes_round_trip(value: bytes) -> None:
    codec = JsonCodec()
    assert codec.decode(codec.encode(value)) == value


# --- the state and pub/sub clients use the codec -------------------------------------------------


def test_state_stores_models_and_reads_them_back_typed(memory_runtime: Runtime) -> None:
    store = memory_runtime.state()
    store.save("customer", Customer("Ada", Address("Main St 1", "12345")))
    customer = store.get_value("customer", as_type=Customer)
    assert customer == Customer("Ada", Address("Main St 1", "12345"))
    assert isinstance(customer.address, Address)
    order = Order(id=7, placed=datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC), items=[],
                  total=decimal.Decimal("1"))
    store.save("order", order)
    assert store.get_value("order", as_type=Order) == order
    assert store.get_value("missing", as_type=Order) is None
    store.save("raw", b"\x00\x01")
    assert store.get_value("raw") == b"\x00\x01"


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


@dataclasses.dataclass
class Line:
    sku: uuid.UUID
    size: Size
    price: decimal.Decimal
    weight: float


@dataclasses.dataclass
class Shipment:
    lines: list[Line]
    by_warehouse: dict[str, Address]
    sent: datetime.datetime
    due: datetime.date | None
    box: tuple[int, int, int]
    labels: frozenset[str]
    note: Any = None
    backup: Address | None = None
    count: int = dataclasses.field(init=False)  # saved, and computed again when built

    def __post_init__(self) -> None:
        self.count = len(self.lines)


def test_a_dataclass_comes_back_as_it_was_saved(memory_runtime: Runtime) -> None:
    store = memory_runtime.state()
    shipment = Shipment(
        lines=[Line(uuid.uuid4(), Size.LARGE, decimal.Decimal("9.95"), 2.0)],
        by_warehouse={"north": Address("Dock 4", "999")},
        sent=datetime.datetime(2026, 11, 26, 9, 30, tzinfo=datetime.UTC),
        due=None, box=(30, 20, 10), labels=frozenset({"fragile"}), note={"free": ["form"]},
    )
    store.save("shipment", shipment)
    assert store.get_value("shipment", as_type=Shipment) == shipment
    store.save("lines", shipment.lines)
    assert store.get_value("lines", as_type=list[Line]) == shipment.lines


def test_a_value_that_does_not_fit_the_type_asked_for_says_so(memory_runtime: Runtime) -> None:
    store = memory_runtime.state()
    store.save("k", {"street": "Main St 1"})  # no zip
    with pytest.raises(SerializationError, match="cannot build Address from the stored value"):
        store.get_value("k", as_type=Address)
    assert store.get_value("k") == {"street": "Main St 1"}


def test_state_refuses_unencodable_values_before_writing(memory_runtime: Runtime) -> None:
    store = memory_runtime.state()
    with pytest.raises(SerializationError, match="Opaque"):
        store.save("k", Opaque())
    assert store.get("k") is None


# --- pickle --------------------------------------------------------------------------------------


def test_pickle_is_refused_unless_allowed(unique: str) -> None:
    with pytest.raises(SerializationError) as raised:
        codec_by_name("pickle")
    assert "allow_pickle" in str(raised.value)
    with pytest.raises(SerializationError, match="allow_pickle"):
        Runtime.from_mapping(
            {"capa": {"codec": "pickle", "default_url": f"memory://{unique}"}}
        )
    assert isinstance(codec_by_name("pickle", allow_pickle=True), PickleCodec)


def test_pickle_when_allowed_round_trips_python_objects(unique: str) -> None:
    document = {"capa": {"codec": "pickle", "allow_pickle": True,
                         "default_url": f"memory://{unique}"}}
    with Runtime.from_mapping(document) as rt:
        assert isinstance(rt.codec, PickleCodec)
        store = rt.state()
        value = {"set": {1, 2}, "tuple": (1, "a"), "complex": 1j, "address": Address("a", "b")}
        store.save("k", value)
        assert store.get_value("k") == value
        bus = rt.pubsub()
        bus.publish(f"t-{unique}", value)
        [message] = bus.pull(f"t-{unique}", timeout=2)
        message.ack()
        assert message.data == value
        assert message.event["datacontenttype"] == "application/x-python-serialize"


def test_pickle_errors_are_serialization_errors() -> None:
    codec = PickleCodec()
    with pytest.raises(SerializationError, match="function"):
        codec.encode(lambda: 1)
    with pytest.raises(SerializationError):
        codec.decode(b"not a pickle")
    assert codec.decode(pickle.dumps([1])) == [1]


def test_unknown_codec_lists_the_known_ones(unique: str) -> None:
    with pytest.raises(SerializationError) as raised:
        codec_by_name("msgpak")
    assert "json" in str(raised.value) and "pickle" in str(raised.value)


class ShoutingCodec:
    """A third-party codec: upper-cased text."""

    name = "shout"
    content_type = "text/x-shout"

    def encode(self, value: Any) -> bytes:
        return str(value).upper().encode()

    def decode(self, data: bytes) -> Any:
        return data.decode()


def test_a_pluggable_codec(monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    monkeypatch.setitem(CODECS, "shout", ShoutingCodec)
    document = {"capa": {"codec": "shout", "default_url": f"memory://{unique}"}}
    with Runtime.from_mapping(document) as rt:
        rt.state().save("k", "hello")
        assert rt.state().get_value("k") == "HELLO"
        bus = rt.pubsub()
        bus.publish(f"t-{unique}", "hi")
        bus.publish(f"t-{unique}", "raw", raw=True)
        messages = bus.pull(f"t-{unique}", max_messages=2, timeout=2)
        for message in messages:
            message.ack()
        assert [m.data for m in messages] == ["HI", "RAW"]
        assert messages[0].event["datacontenttype"] == "text/x-shout"
