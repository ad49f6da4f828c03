"""Conformance of state components: every Target of the "state" block passes the same tests.

Modeled on Dapr components-contrib's state conformance suite, plus app-id isolation and the
checks that undeclared features are refused.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from tests.conformance.support import COMPONENT, RuntimeFactory, wait_until

from capa_core import (
    BulkStateError,
    Delete,
    ETagMismatch,
    Feature,
    Runtime,
    StateItem,
    StateStore,
    UnsupportedFeature,
    Upsert,
)

BLOCK = "state"

VALUES: dict[str, Any] = {
    "int": 42,
    "zero": 0,
    "negative-int": -7,
    "big-int": 2**62 + 1,
    "float": 3.25,
    "true": True,
    "false": False,
    "none": None,
    "bytes": b"\x00\x01\xffbinary",
    "empty-bytes": b"",
    "bytes-that-look-like-json": b"1",
    "json-string": '{"message": "hello", "n": 1}',
    "plain-string": "hello world",
    "empty-string": "",
    "unicode": "grüße, 日本語, emoji \U0001f600",
    "dict": {"a": 1, "nested": {"b": [1, 2, {"c": None}]}, "flag": True},
    "empty-dict": {},
    "list": [1, "two", 3.0, None, {"four": 4}],
    "empty-list": [],
}

KEYS = ["plain", "with space", "with:colon", "with/slash", "x||y", "ключ", "k" * 200]


def etag_of(store: StateStore, key: str) -> str:
    item = store.get(key)
    assert item is not None and item.etag
    return item.etag


class TestStateConformance:
    @pytest.fixture
    def store(self, runtime: Runtime) -> StateStore:
        return runtime.state(COMPONENT)

    @pytest.fixture
    def features(self, store: StateStore) -> frozenset[Feature]:
        return store.component.features

    def need(self, features: frozenset[Feature], feature: Feature) -> None:
        if feature not in features:
            pytest.skip(f"the component does not declare {feature.value}")

    # --- CRUD -----------------------------------------------------------------------------------

    @pytest.mark.parametrize("name", list(VALUES))
    def test_save_and_get_round_trips_every_kind_of_value(
        self, store: StateStore, name: str
    ) -> None:
        value = VALUES[name]
        store.save(f"value-{name}", value)
        item = store.get(f"value-{name}")
        assert item is not None
        assert item.key == f"value-{name}"
        assert item.value == value
        assert type(item.value) is type(value)

    def test_keys_of_every_shape_work(self, store: StateStore) -> None:
        for n, key in enumerate(KEYS):
            store.save(key, n)
        assert [store.get_value(key) for key in KEYS] == list(range(len(KEYS)))
        store.bulk_delete(KEYS)
        assert store.bulk_get(KEYS) == [None] * len(KEYS)

    def test_ping_answers(self, store: StateStore) -> None:
        assert store.ping() is None

    def test_get_of_a_missing_key_is_none(self, store: StateStore) -> None:
        assert store.get("never-written") is None
        assert store.get_value("never-written", "fallback") == "fallback"

    def test_save_overwrites(self, store: StateStore) -> None:
        store.save("k", "first")
        store.save("k", {"second": 2})
        assert store.get_value("k") == {"second": 2}

    def test_delete_leaves_nothing(self, store: StateStore) -> None:
        store.save("k", "v")
        store.delete("k")
        assert store.get("k") is None
        store.delete("k")  # deleting a missing key without an etag is fine

    # --- bulk -----------------------------------------------------------------------------------

    def test_bulk_save_then_bulk_get_with_missing_keys(self, store: StateStore) -> None:
        store.bulk_save([Upsert("b1", 1), Upsert("b2", {"two": 2}), StateItem("b3", b"3")])
        items = store.bulk_get(["b1", "missing-1", "b2", "b3", "missing-2"])
        assert [None if i is None else i.value for i in items] == [
            1, None, {"two": 2}, b"3", None,
        ]
        assert [i.key for i in items if i is not None] == ["b1", "b2", "b3"]
        assert all(i.etag for i in items if i is not None)

    def test_bulk_get_of_nothing(self, store: StateStore) -> None:
        assert store.bulk_get([]) == []

    def test_bulk_delete(self, store: StateStore) -> None:
        store.bulk_save([Upsert(f"d{n}", n) for n in range(5)])
        store.bulk_delete(["d0", Delete("d1"), "d3", "never-there"])
        assert [i is None for i in store.bulk_get([f"d{n}" for n in range(5)])] == [
            True, True, False, True, False,
        ]

    # --- etags ----------------------------------------------------------------------------------

    def test_reads_return_a_non_empty_etag_that_save_returned(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        etag = store.save("k", 1)
        assert isinstance(etag, str) and etag
        assert etag_of(store, "k") == etag

    def test_etag_mismatch_then_success_changes_the_etag(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        first = store.save("k", "v1")
        second = store.save("k", "v2")
        assert second != first
        with pytest.raises(ETagMismatch) as raised:
            store.save("k", "v3", etag=first)
        assert raised.value.key == "k"  # the caller's key, never the prefixed one
        assert store.get_value("k") == "v2"
        third = store.save("k", "v3", etag=second)
        assert third not in (first, second)
        assert store.get("k") == StateItem("k", "v3", third)

    def test_etag_on_a_missing_key_is_a_mismatch(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        etag = store.save("k", 1)
        store.delete("k")
        with pytest.raises(ETagMismatch):
            store.save("k", 2, etag=etag)
        with pytest.raises(ETagMismatch):
            store.delete("k", etag=etag)
        assert store.get("k") is None

    def test_delete_with_etag(self, store: StateStore, features: frozenset[Feature]) -> None:
        self.need(features, Feature.ETAG)
        old = store.save("k", 1)
        current = store.save("k", 2)
        with pytest.raises(ETagMismatch):
            store.delete("k", etag=old)
        assert store.get_value("k") == 2
        store.delete("k", etag=current)
        assert store.get("k") is None

    def test_bulk_save_with_one_bad_etag_fails_only_that_key(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        good = store.save("good", 0)
        store.save("bad", 0)
        with pytest.raises(BulkStateError) as raised:
            store.bulk_save(
                [Upsert("good", 1, etag=good), Upsert("bad", 1, etag="not-its-etag"),
                 Upsert("fresh", 1)]
            )
        assert set(raised.value.failures) == {"bad"}
        assert isinstance(raised.value.failures["bad"], ETagMismatch)
        assert [i.value if i else None for i in store.bulk_get(["good", "bad", "fresh"])] == [
            1, 0, 1,
        ]

    def test_bulk_delete_with_one_bad_etag_fails_only_that_key(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        store.save("a", 1)
        etag_b = store.save("b", 2)
        store.save("b", 3)
        with pytest.raises(BulkStateError) as raised:
            store.bulk_delete(["a", Delete("b", etag=etag_b)])
        assert set(raised.value.failures) == {"b"}
        assert store.get("a") is None
        assert store.get_value("b") == 3

    def test_first_write_refuses_a_second_write_without_etag(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        etag = store.save("k", "one", concurrency="first-write")
        with pytest.raises(ETagMismatch):
            store.save("k", "two", concurrency="first-write")
        assert store.get_value("k") == "one"
        # With the current etag the write goes through, and last-write ignores the guard.
        etag = store.save("k", "three", concurrency="first-write", etag=etag)
        store.save("k", "four", concurrency="last-write")
        assert store.get_value("k") == "four"

    def test_first_write_is_free_again_after_a_delete(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.ETAG)
        store.save("k", 1, concurrency="first-write")
        store.delete("k")
        store.save("k", 2, concurrency="first-write")
        assert store.get_value("k") == 2

    def test_concurrency_must_be_first_or_last_write(self, store: StateStore) -> None:
        with pytest.raises(ValueError, match="first-write"):
            store.save("k", 1, concurrency="sometimes")
        assert store.get("k") is None

    # --- ttl ------------------------------------------------------------------------------------

    @pytest.mark.parametrize("ttl", ["10", "abc", [1], True, 0, -5, float("nan"), float("inf")])
    def test_ttl_must_be_a_positive_number(self, store: StateStore, ttl: Any) -> None:
        with pytest.raises(ValueError, match="ttl"):
            store.save("k", 1, ttl=ttl)
        assert store.get("k") is None

    def test_ttl_expires_and_reads_report_the_expiry(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TTL)
        before = time.time()
        store.save("short", "gone soon", ttl=2)
        store.save("long", "stays", ttl=3600)
        store.save("forever", "stays")
        item = store.get("short")
        assert item is not None and item.expires_at is not None
        assert before + 1 <= item.expires_at <= time.time() + 2.5
        long_item = store.get("long")
        assert long_item is not None and long_item.expires_at is not None
        assert long_item.expires_at > time.time() + 3000
        assert store.get("forever") == StateItem("forever", "stays", etag_of(store, "forever"))
        wait_until(lambda: store.get("short") is None, timeout=3.0, interval=0.05)
        assert time.time() - before <= 3.5
        assert store.bulk_get(["short", "long"])[0] is None
        assert store.get_value("long") == "stays"

    def test_ttl_minus_one_or_a_rewrite_without_ttl_clears_it(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TTL)
        store.save("a", 1, ttl=1)
        store.save("a", 2, ttl=-1)
        store.save("b", 1, ttl=1)
        store.save("b", 2)
        for key in ("a", "b"):
            item = store.get(key)
            assert item is not None and item.expires_at is None
        time.sleep(1.3)
        assert store.get_value("a") == 2
        assert store.get_value("b") == 2

    def test_expired_key_counts_as_absent_for_etag_and_first_write(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TTL)
        self.need(features, Feature.ETAG)
        etag = store.save("k", 1, ttl=1)
        wait_until(lambda: store.get("k") is None, timeout=3.0, interval=0.05)
        with pytest.raises(ETagMismatch):
            store.save("k", 2, etag=etag)
        store.save("k", 3, concurrency="first-write")
        assert store.get_value("k") == 3

    # --- transactions ---------------------------------------------------------------------------

    def test_transaction_applies_in_order(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        store.bulk_save([Upsert("k1", "v1"), Upsert("k2", "old")])
        store.transaction(
            [Delete("k1"), Upsert("k2", "v2"), Delete("k2"), Upsert("k3", {"v": 3})]
        )
        assert [i.value if i else None for i in store.bulk_get(["k1", "k2", "k3"])] == [
            None, None, {"v": 3},
        ]

    def test_transaction_later_ops_see_earlier_ones(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        store.transaction([Upsert("k", 1), Upsert("k", 2), Delete("gone"), Upsert("gone", 3)])
        assert store.get_value("k") == 2
        assert store.get_value("gone") == 3

    def test_transaction_deleting_a_missing_key_is_fine(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        store.transaction([Delete("never-there"), Upsert("k", 1)])
        assert store.get_value("k") == 1

    def test_transaction_with_a_bad_etag_changes_nothing(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        self.need(features, Feature.ETAG)
        store.bulk_save([Upsert("a", "a0"), Upsert("b", "b0"), Upsert("c", "c0")])
        etag_a = etag_of(store, "a")
        with pytest.raises(ETagMismatch):
            store.transaction(
                [Upsert("a", "a1", etag=etag_a), Delete("b"), Upsert("new", 1),
                 Upsert("c", "c1", etag="stale")]
            )
        assert [i.value if i else None for i in store.bulk_get(["a", "b", "c", "new"])] == [
            "a0", "b0", "c0", None,
        ]
        assert etag_of(store, "a") == etag_a

    def test_transaction_with_matching_etags(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        self.need(features, Feature.ETAG)
        etag_a = store.save("a", 1)
        etag_b = store.save("b", 1)
        store.transaction([Upsert("a", 2, etag=etag_a), Delete("b", etag=etag_b)])
        assert store.get_value("a") == 2
        assert store.get("b") is None
        assert etag_of(store, "a") != etag_a

    def test_transaction_first_write_on_an_existing_key_fails_atomically(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        self.need(features, Feature.ETAG)
        store.save("exists", 1)
        with pytest.raises(ETagMismatch):
            store.transaction(
                [Upsert("fresh", 1), Upsert("exists", 2, concurrency="first-write")]
            )
        assert store.get("fresh") is None
        assert store.get_value("exists") == 1

    def test_transaction_rejects_other_operations(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.TRANSACTIONAL)
        with pytest.raises(TypeError):
            store.transaction([Upsert("a", 1), ("b", 2)])  # type: ignore[list-item]
        assert store.get("a") is None

    # --- keys -----------------------------------------------------------------------------------

    def test_keys_and_delete_prefix(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        self.need(features, Feature.KEYS)
        store.bulk_save([Upsert("user:1", 1), Upsert("user:2", 2), Upsert("order:1", 3)])
        assert sorted(store.keys("user:")) == ["user:1", "user:2"]
        assert sorted(store.keys()) == ["order:1", "user:1", "user:2"]
        assert store.delete_prefix("user:") == 2
        assert store.keys() == ["order:1"]

    # --- app ids --------------------------------------------------------------------------------

    def test_two_apps_on_one_store_do_not_see_each_others_keys(
        self, store: StateStore, make_runtime: RuntimeFactory, unique: str
    ) -> None:
        other = make_runtime(app_id=f"other-{unique}").state(COMPONENT)
        same_app = make_runtime().state(COMPONENT)
        store.save("shared-name", "mine")
        assert other.get("shared-name") is None
        other.save("shared-name", "theirs")
        assert store.get_value("shared-name") == "mine"
        assert same_app.get_value("shared-name") == "mine"  # the same app sees its own keys
        other.delete("shared-name")
        assert store.get_value("shared-name") == "mine"

    def test_keys_listing_is_per_app(
        self, store: StateStore, make_runtime: RuntimeFactory, unique: str,
        features: frozenset[Feature],
    ) -> None:
        self.need(features, Feature.KEYS)
        other = make_runtime(app_id=f"other-{unique}").state(COMPONENT)
        store.save("k-mine", 1)
        other.save("k-theirs", 1)
        assert store.keys("k-") == ["k-mine"]
        assert other.delete_prefix("") == 1
        assert store.keys("k-") == ["k-mine"]

    # --- features not declared ------------------------------------------------------------------

    def test_undeclared_features_are_refused(
        self, store: StateStore, features: frozenset[Feature]
    ) -> None:
        absent = [f for f in STATE_FEATURES if f not in features]
        if not absent:
            pytest.skip("the component declares every state feature")
        for feature in absent:
            assert_refused(store, feature)

    @pytest.mark.parametrize(
        "feature", ["etag", "ttl", "transactional", "keys"], ids=lambda f: f
    )
    def test_a_component_without_a_feature_refuses_it(
        self, runtime: Runtime, feature: str
    ) -> None:
        # The same backend with one feature taken away: the client must refuse, not ignore.
        component = runtime.state(COMPONENT).component
        component.features = component.features - {Feature(feature)}  # type: ignore[misc]
        store = StateStore(component, runtime.dispatcher, runtime.codec, key_prefix="reduced||")
        assert_refused(store, Feature(feature))


STATE_FEATURES = (Feature.ETAG, Feature.TTL, Feature.TRANSACTIONAL, Feature.KEYS)


def assert_refused(store: StateStore, feature: Feature) -> None:
    """Every call that needs ``feature`` raises UnsupportedFeature naming it, writing nothing."""
    calls: dict[Feature, list[Any]] = {
        Feature.ETAG: [
            lambda: store.save("absent", 1, etag="some-etag"),
            lambda: store.save("absent", 1, concurrency="first-write"),
            lambda: store.delete("absent", etag="some-etag"),
            lambda: store.bulk_save([Upsert("absent", 1, etag="some-etag")]),
            lambda: store.bulk_delete([Delete("absent", etag="some-etag")]),
        ],
        Feature.TTL: [
            lambda: store.save("absent", 1, ttl=30),
            lambda: store.bulk_save([Upsert("absent", 1, ttl=30)]),
        ],
        Feature.TRANSACTIONAL: [lambda: store.transaction([Upsert("absent", 1)])],
        Feature.KEYS: [lambda: store.keys(), lambda: store.delete_prefix("")],
    }
    for call in calls[feature]:
        with pytest.raises(UnsupportedFeature) as raised:
            call()
        assert raised.value.feature == feature.value
        assert store.name in str(raised.value)
    assert store.get("absent") is None
