"""Random sequences of state operations checked against a plain-dict model (hypothesis stateful).

Each run drives a StateStore on memory or SQLite through save (last-write, first-write, with the
current or a stale ETag), get, delete, bulk operations and transactions, and after every step
compares what the store answers with what a dict says it must.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capa_core import BulkStateError, Delete, ETagMismatch, Runtime, StateStore, Upsert

KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.one_of(
    st.integers(-5, 5), st.text(max_size=5), st.binary(max_size=5), st.booleans(),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.sampled_from("xy"), st.none()),
)
# Which ETag a conditional operation passes: none, the key's current one, or a stale one.
ETAG_CHOICE = st.sampled_from(["none", "current", "stale"])
FOREIGN_ETAG = "never-issued-by-any-store"
MISMATCH = object()  # the model's answer when an operation must fail with ETagMismatch


class StateModel(RuleBasedStateMachine):
    """Compares a StateStore with ``self.model``: key -> (value, etag)."""

    url: Callable[[Path], str]

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="capa-model-"))
        unique = uuid.uuid4().hex[:12]
        self.runtime = Runtime.from_mapping(
            {"capa": {"app_id": f"model-{unique}", "default_url": f"memory://{unique}"},
             "state": {"s": {"url": self.url(self.tmp).replace("{unique}", unique)}}}
        )
        self.store: StateStore = self.runtime.state("s")
        self.model: dict[str, tuple[Any, str]] = {}
        self.old_etags: list[str] = [FOREIGN_ETAG]

    def teardown(self) -> None:
        self.runtime.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------------

    def etag_for(self, key: str, choice: str, data: st.DataObject) -> str | None:
        if choice == "none":
            return None
        if choice == "current":
            return self.model[key][1] if key in self.model else data.draw(
                st.sampled_from(self.old_etags)
            )
        current = self.model.get(key, (None, None))[1]
        stale = [e for e in self.old_etags if e != current]
        return data.draw(st.sampled_from(stale))

    def write_fails(self, key: str, etag: str | None, first_write: bool,
                    view: dict[str, Any]) -> bool:
        current = view.get(key)
        if etag is not None:
            return current is None or current[1] != etag
        return first_write and current is not None

    def learn(self, key: str, value: Any) -> None:
        """After a write that succeeded, read back the new ETag (and check the value)."""
        item = self.store.get(key)
        assert item is not None and item.value == value
        assert item.etag
        if key in self.model:
            assert item.etag != self.model[key][1], "a write must change the ETag"
            self.old_etags.append(self.model[key][1])
        self.model[key] = (value, item.etag)

    def forget(self, key: str) -> None:
        if key in self.model:
            self.old_etags.append(self.model.pop(key)[1])

    # --- rules ----------------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, choice=ETAG_CHOICE, first_write=st.booleans(), data=st.data())
    def save(self, key: str, value: Any, choice: str, first_write: bool,
             data: st.DataObject) -> None:
        etag = self.etag_for(key, choice, data)
        concurrency = "first-write" if first_write else "last-write"
        if self.write_fails(key, etag, first_write, self.model):
            with pytest.raises(ETagMismatch):
                self.store.save(key, value, etag=etag, concurrency=concurrency)
        else:
            new = self.store.save(key, value, etag=etag, concurrency=concurrency)
            self.learn(key, value)
            assert new == self.model[key][1]

    @rule(key=KEYS, choice=ETAG_CHOICE, data=st.data())
    def delete(self, key: str, choice: str, data: st.DataObject) -> None:
        etag = self.etag_for(key, choice, data)
        if etag is not None and (key not in self.model or self.model[key][1] != etag):
            with pytest.raises(ETagMismatch):
                self.store.delete(key, etag=etag)
        else:
            self.store.delete(key, etag=etag)
            self.forget(key)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        item = self.store.get(key)
        if key not in self.model:
            assert item is None
        else:
            assert item is not None
            assert (item.key, item.value, item.etag) == (key, *self.model[key])

    @rule(keys=st.lists(KEYS, max_size=5))
    def bulk_get(self, keys: list[str]) -> None:
        items = self.store.bulk_get(keys)
        assert len(items) == len(keys)
        for key, item in zip(keys, items, strict=True):
            expected = self.model.get(key)
            assert (None if item is None else (item.value, item.etag)) == expected

    @rule(
        entries=st.lists(
            st.tuples(KEYS, VALUES, ETAG_CHOICE), max_size=4, unique_by=lambda e: e[0]
        ),
        data=st.data(),
    )
    def bulk_save(self, entries: list[tuple[str, Any, str]], data: st.DataObject) -> None:
        upserts = [Upsert(k, v, etag=self.etag_for(k, c, data)) for k, v, c in entries]
        failing = {u.key for u in upserts if self.write_fails(u.key, u.etag, False, self.model)}
        if failing:
            with pytest.raises(BulkStateError) as raised:
                self.store.bulk_save(upserts)
            assert set(raised.value.failures) == failing
            assert all(isinstance(e, ETagMismatch) for e in raised.value.failures.values())
        else:
            self.store.bulk_save(upserts)
        for upsert in upserts:
            if upsert.key not in failing:
                self.learn(upsert.key, upsert.value)

    @rule(entries=st.lists(st.tuples(KEYS, ETAG_CHOICE), max_size=4, unique_by=lambda e: e[0]),
          data=st.data())
    def bulk_delete(self, entries: list[tuple[str, str]], data: st.DataObject) -> None:
        deletes = [Delete(k, etag=self.etag_for(k, c, data)) for k, c in entries]
        failing = {
            d.key for d in deletes
            if d.etag is not None and (d.key not in self.model or self.model[d.key][1] != d.etag)
        }
        if failing:
            with pytest.raises(BulkStateError) as raised:
                self.store.bulk_delete(deletes)
            assert set(raised.value.failures) == failing
        else:
            self.store.bulk_delete(deletes)
        for delete in deletes:
            if delete.key not in failing:
                self.forget(delete.key)

    @rule(
        ops=st.lists(
            st.tuples(st.sampled_from(["upsert", "delete"]), KEYS, VALUES, ETAG_CHOICE,
                      st.booleans()),
            min_size=1, max_size=5,
        ),
        data=st.data(),
    )
    def transaction(self, ops: list[tuple[str, str, Any, str, bool]], data: st.DataObject) -> None:
        operations: list[Upsert | Delete] = []
        # The model's staged view: a key written earlier in the transaction has an ETag no
        # caller can know yet, so any ETag given for it later must mismatch.
        staged: dict[str, Any] = dict(self.model)
        outcome: object = None
        for kind, key, value, choice, first_write in ops:
            etag = self.etag_for(key, choice, data)
            if kind == "upsert":
                concurrency = "first-write" if first_write else "last-write"
                operations.append(Upsert(key, value, etag=etag, concurrency=concurrency))
                if self.write_fails(key, etag, first_write, staged):
                    outcome = MISMATCH
                staged[key] = (value, object())
            else:
                operations.append(Delete(key, etag=etag))
                if etag is not None and (key not in staged or staged[key][1] != etag):
                    outcome = MISMATCH
                staged.pop(key, None)
        before = {key: self.store.get(key) for key in ("a", "b", "c", "d")}
        if outcome is MISMATCH:
            with pytest.raises(ETagMismatch):
                self.store.transaction(operations)
            assert {key: self.store.get(key) for key in before} == before, "not atomic"
            return
        self.store.transaction(operations)
        for key in {op.key for op in operations}:
            if key in staged:
                self.learn(key, staged[key][0])
            else:
                self.forget(key)

    @precondition(lambda self: bool(self.model))
    @rule()
    def rewrite_everything(self) -> None:
        for key, (value, _) in list(self.model.items()):
            self.store.save(key, value)
            self.learn(key, value)

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def keys_match_the_model(self) -> None:
        assert sorted(self.store.keys()) == sorted(self.model)


def machine(name: str, url: Callable[[Path], str]) -> Any:
    cls = type(name, (StateModel,), {"url": staticmethod(url)})
    case = cls.TestCase
    case.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    return case


TestMemoryStateModel = machine("MemoryStateModel", lambda tmp: "memory://{unique}")
TestSqliteStateModel = machine("SqliteStateModel", lambda tmp: f"sqlite:///{tmp / 'model.db'}")
