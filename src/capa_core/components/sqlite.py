"""The embedded default: state, pub/sub, configuration and lock in one SQLite file.

URL form ``sqlite:///relative/path.db`` (relative to the working directory when the component is
made) or ``sqlite:////absolute/path.db``; a plain ``path`` setting works too. Optional settings,
also accepted as URL query parameters: ``busy_timeout`` (seconds a writer waits for another,
default 5), ``table_prefix`` (default ``capa_``) and, for configuration, ``poll_interval``
(seconds between checks for changes made by other processes, default 0.02).

Supports state (ETags, TTL, transactions, key listing), pub/sub (groups, leases, nack with delay,
purge), configuration (write and watch) and lock. The four blocks may share one file, each in its
own tables, which are created on first use. Everything is durable and shared between the
processes of one machine that open the same file: consumers in different processes compete
within a group, a consumer killed while holding a message loses it when its lease runs out, and
configuration watchers see changes made by any process within ``poll_interval``. Components of
one process on the same file share one connection per thread (WAL journal, synchronous=NORMAL).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3  # the standard library's: this module is imported only when sqlite is configured
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import CapaError, ETagMismatch, SettingsError
from ..spi import (
    ChangeCallback,
    Component,
    ConfigurationComponent,
    LockComponent,
    PubSubComponent,
    StateComponent,
)
from ..types import (
    ConfigurationChange,
    ConfigurationItem,
    DeleteRequest,
    Delivery,
    Feature,
    SetRequest,
    StoredValue,
    UnlockStatus,
)

log = logging.getLogger("capa_core.sqlite")

DEFAULT_FILE = "capa.db"
URL_FORM = "sqlite:///relative/path.db or sqlite:////absolute/path.db"
_QUERY_OPTIONS = ("busy_timeout", "table_prefix", "poll_interval")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CHUNK = 500  # keys per IN (...) list, well under SQLite's limit on bound parameters


# --- one database file, shared by the components of this process -------------------------------


class _ThreadConnection(threading.local):
    conn: sqlite3.Connection | None = None


class _Database:
    """The connections of this process to one file: one per thread, opened on first use."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.users = 0
        self.local = _ThreadConnection()
        self.mutex = threading.Lock()
        self.connections: dict[threading.Thread, sqlite3.Connection] = {}
        self.schemas: set[str] = set()
        # Pullers of this process wait here; publishes and nacks of this process wake them.
        self.changed = threading.Condition()
        self.generation = 0
        # Configuration watchers of this process on this file, woken by local writes.
        self.watcher_wakes: set[threading.Event] = set()

    def connection(self) -> sqlite3.Connection:
        conn = self.local.conn
        return conn if conn is not None else self._open()

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may close every thread's connection;
        # each connection is used by the one thread that opened it.
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None,
            check_same_thread=False, cached_statements=256,
        )
        try:
            self._set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        thread = threading.current_thread()
        with self.mutex:
            for dead in [t for t in self.connections if not t.is_alive()]:
                self.connections.pop(dead).close()
            self.connections[thread] = conn
        self.local.conn = conn
        return conn

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (a persistent setting: usually it already is)."""
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            return
        # The switch needs the file to itself; another process opening it at the same moment
        # makes it fail at once rather than wait, so wait here.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def forget_thread(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        conn = self.local.conn
        if conn is not None:
            self.local.conn = None
            with self.mutex:
                self.connections.pop(threading.current_thread(), None)
            conn.close()

    def ensure_schema(self, conn: sqlite3.Connection, name: str, ddl: Sequence[str]) -> None:
        with self.mutex:
            if name in self.schemas:
                return
        with transaction(conn):
            for statement in ddl:
                conn.execute(statement)
        with self.mutex:
            self.schemas.add(name)

    def wake_pullers(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def close(self) -> None:
        with self.mutex:
            connections = list(self.connections.values())
            self.connections.clear()
        self.local.conn = None
        for conn in connections:
            conn.close()

    def reset_after_fork(self) -> None:
        # SQLite connections must not cross fork(): the child opens its own. The inherited ones
        # are kept referenced (never closed) so finalizers do not touch the parent's locks.
        _inherited.extend(self.connections.values())
        self.connections = {}
        self.local.conn = None
        self.mutex = threading.Lock()
        self.changed = threading.Condition()
        self.watcher_wakes = set()


_databases: dict[tuple[str, float], _Database] = {}
_databases_lock = threading.Lock()
_inherited: list[sqlite3.Connection] = []


def _acquire(path: str, busy_timeout: float) -> _Database:
    with _databases_lock:
        db = _databases.get((path, busy_timeout))
        if db is None:
            db = _databases[(path, busy_timeout)] = _Database(path, busy_timeout)
        db.users += 1
        return db


def _release(db: _Database) -> None:
    with _databases_lock:
        db.users -= 1
        if db.users > 0:
            return
        _databases.pop((db.path, db.busy_timeout), None)
    db.close()


# Configuration components with a watcher thread, to restart in a forked child.
_watching: weakref.WeakSet[SqliteConfiguration] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _databases_lock
    _databases_lock = threading.Lock()
    for db in _databases.values():
        db.reset_after_fork()
    for component in list(_watching):
        component.restart_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken up front, so it never fails half-way on another writer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # never leave this thread's connection inside a transaction
            conn.execute("ROLLBACK")
        raise


def _placeholders(count: int) -> str:
    return ",".join("?" * count)


def _chunks(seq: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), _CHUNK):
        yield seq[start:start + _CHUNK]


def _dumps(mapping: Mapping[str, str]) -> str | None:
    return json.dumps(dict(mapping), separators=(",", ":")) if mapping else None


def _loads(text: str | None) -> dict[str, str]:
    return json.loads(text) if text else {}


def _new_etag() -> str:
    return os.urandom(8).hex()


# --- what every sqlite component shares ----------------------------------------------------------


class _SqliteComponent(Component):
    """Settings, the shared database and lazily created tables of one sqlite component."""

    kind = "sqlite"
    # "database is locked" after busy_timeout, or a file that cannot be opened right now.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.OperationalError,)

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.path = self._database_path()
        self.busy_timeout = self.option("busy_timeout", float, 5.0)
        if not 0 <= self.busy_timeout <= 3600:
            raise SettingsError(
                self.source, "busy_timeout", f"{self.busy_timeout} is out of range",
                "give the seconds a writer may wait for another, e.g. 5",
            )
        self.table_prefix = self.option("table_prefix", str, "capa_")
        if not _IDENTIFIER.match(self.table_prefix):
            raise SettingsError(
                self.source, "table_prefix", f"{self.table_prefix!r} is not a plain SQL name",
                "use letters, digits and underscores, e.g. capa_",
            )
        self._db = _acquire(self.path, self.busy_timeout)
        self._local = self._db.local
        self._ready = False
        self._closed = False

    def _database_path(self) -> str:
        """The absolute file path from ``url`` or ``path``; a bad one fails naming the setting."""
        url, path = self.metadata.get("url"), self.metadata.get("path")
        if url and path:
            raise SettingsError(
                self.source, "path", "is given together with url", "keep only one of them"
            )
        if path:
            if not isinstance(path, str | os.PathLike):
                raise SettingsError(self.source, "path", f"{path!r} is not a path", URL_FORM)
            return self._checked_file("path", os.fspath(path))
        if not url:
            return self._checked_file("path", DEFAULT_FILE)
        if not isinstance(url, str):
            raise SettingsError(self.source, "url", f"{url!r} is not a URL", f"write {URL_FORM}")
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite":
            raise SettingsError(
                self.source, "url", f"{url!r} is not a sqlite URL", f"write {URL_FORM}"
            )
        if parts.netloc:
            raise SettingsError(
                self.source, "url", f"{url!r} names a host ({parts.netloc!r}); SQLite files have "
                "none", f"write three slashes for a relative path, sqlite:///{parts.netloc}"
                f"{parts.path}, or four for an absolute one",
            )
        raw = unquote(parts.path)
        if not raw.startswith("/") or len(raw) < 2:
            raise SettingsError(
                self.source, "url", f"{url!r} has no file path", f"write {URL_FORM}"
            )
        file = raw[1:]
        if file == ":memory:" or file.startswith("file:"):
            raise SettingsError(
                self.source, "url", f"{url!r} is not a file on disk",
                "use memory:// for a store that lives in this process only, or a file path",
            )
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _QUERY_OPTIONS:
                raise SettingsError(
                    self.source, "url", f"unknown query parameter {key!r}",
                    f"use only {', '.join(_QUERY_OPTIONS)}",
                )
            self.metadata.setdefault(key, value)
        return self._checked_file("url", file)

    def _checked_file(self, setting: str, file: str) -> str:
        full = os.path.abspath(os.path.expanduser(file))
        if os.path.isdir(full):
            raise SettingsError(
                self.source, setting, f"{full} is a directory",
                f"name a file inside it, e.g. {os.path.join(full, DEFAULT_FILE)}",
            )
        parent = os.path.dirname(full)
        if not os.path.isdir(parent):
            raise SettingsError(
                self.source, setting, f"the directory {parent} does not exist",
                "create it, or point the setting at an existing directory",
            )
        return full

    def _table(self, name: str) -> str:
        return self.table_prefix + name

    def _ddl(self) -> tuple[str, ...]:
        """CREATE ... IF NOT EXISTS statements of this component's tables."""
        return ()

    def _conn(self) -> sqlite3.Connection:
        conn = self._local.conn
        if conn is None or not self._ready:
            conn = self._prepare()
        return conn

    def _prepare(self) -> sqlite3.Connection:
        if self._closed:
            raise CapaError(f"{self.type_name} component {self.name!r} is closed")
        conn = self._db.connection()
        if not self._ready:
            self._db.ensure_schema(conn, f"{self.block}:{self.table_prefix}", self._ddl())
            self._ready = True
        return conn

    def translate_error(self, exc: Exception) -> CapaError | None:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        ):
            return SettingsError(
                self.source, "url", f"{self.path} cannot be used as a SQLite database ({exc})",
                "point the setting at a SQLite file, or at a path where one may be created",
            )
        return None

    def close(self) -> None:
        super().close()
        if not self._closed:
            self._closed = True
            _release(self._db)


# --- state -------------------------------------------------------------------------------------


class SqliteState(_SqliteComponent, StateComponent):
    features = frozenset({Feature.ETAG, Feature.TTL, Feature.TRANSACTIONAL, Feature.KEYS})

    _SWEEP_EVERY = 1024  # writes of this component between two deletions of expired rows

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        t = self._table("state")
        self._t = t
        self._sql_get = f"SELECT value, etag, expires_at FROM {t} WHERE key = ?"
        self._sql_upsert = (
            f"INSERT INTO {t} (key, value, etag, expires_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag, "
            "expires_at = excluded.expires_at"
        )
        # First write: an existing row may only be replaced when it has expired.
        self._sql_insert_new = (
            self._sql_upsert + f" WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?"
        )
        self._sql_update_if = (
            f"UPDATE {t} SET value = ?, etag = ?, expires_at = ? WHERE key = ? AND etag = ? "
            "AND (expires_at IS NULL OR expires_at > ?)"
        )
        self._sql_delete = f"DELETE FROM {t} WHERE key = ?"
        self._sql_delete_if = (
            f"DELETE FROM {t} WHERE key = ? AND etag = ? AND (expires_at IS NULL OR expires_at > ?)"
        )
        self._writes = -1  # so the first write of this component sweeps too

    def _ddl(self) -> tuple[str, ...]:
        t = self._t
        return (
            f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "etag TEXT NOT NULL, expires_at REAL) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {t}_expiry ON {t} (expires_at) "
            "WHERE expires_at IS NOT NULL",
        )

    def get(self, key: str) -> StoredValue | None:
        conn = self._local.conn  # _conn() inlined: this is the hottest path of the module
        if conn is None or not self._ready:
            conn = self._prepare()
        row = conn.execute(self._sql_get, (key,)).fetchone()
        if row is None:
            return None
        if row[2] is not None and row[2] <= time.time():
            return None  # deleted later by a writer's sweep (_count_writes): reads never write
        # The row is (value, etag, expires_at) already: reuse it without copying its fields.
        stored: StoredValue = tuple.__new__(StoredValue, row)
        return stored

    def bulk_get(self, keys: Sequence[str]) -> list[StoredValue | None]:
        conn = self._conn()
        found: dict[str, StoredValue] = {}
        now = time.time()
        for chunk in _chunks(list(dict.fromkeys(keys))):
            sql = (
                f"SELECT key, value, etag, expires_at FROM {self._t} "
                f"WHERE key IN ({_placeholders(len(chunk))})"
            )
            for key, value, etag, expires_at in conn.execute(sql, chunk):
                if expires_at is None or expires_at > now:
                    found[key] = StoredValue(value, etag, expires_at)
        return [found.get(key) for key in keys]

    def _write(self, conn: sqlite3.Connection, request: SetRequest) -> str:
        key, value, etag, first_write, ttl = request
        etag_out = _new_etag()
        expires_at = None if ttl is None else time.time() + ttl
        if etag is not None:
            cur = conn.execute(
                self._sql_update_if, (value, etag_out, expires_at, key, etag, time.time())
            )
            if not cur.rowcount:
                raise ETagMismatch(key)
        elif first_write:
            now = time.time()
            cur = conn.execute(self._sql_insert_new, (key, value, etag_out, expires_at, now))
            if not cur.rowcount:
                raise ETagMismatch(key, "first-write: the key exists and no etag was given")
        else:
            conn.execute(self._sql_upsert, (key, value, etag_out, expires_at))
        return etag_out

    def _remove(self, conn: sqlite3.Connection, request: DeleteRequest) -> None:
        if request.etag is None:
            conn.execute(self._sql_delete, (request.key,))
        elif not conn.execute(
            self._sql_delete_if, (request.key, request.etag, time.time())
        ).rowcount:
            raise ETagMismatch(request.key)

    def _count_writes(self, conn: sqlite3.Connection, count: int = 1) -> None:
        before = self._writes
        self._writes += count
        if before // self._SWEEP_EVERY != self._writes // self._SWEEP_EVERY:
            conn.execute(f"DELETE FROM {self._t} WHERE expires_at <= ?", (time.time(),))

    def set(self, request: SetRequest) -> str:
        conn = self._conn()
        etag = self._write(conn, request)
        self._count_writes(conn)
        return etag

    def delete(self, request: DeleteRequest) -> None:
        self._remove(self._conn(), request)

    def bulk_set(self, requests: Sequence[SetRequest]) -> dict[str, Exception]:
        conn = self._conn()
        failures: dict[str, Exception] = {}
        with transaction(conn):  # one commit for all; entries still succeed or fail alone
            for request in requests:
                try:
                    self._write(conn, request)
                except ETagMismatch as exc:
                    failures[request.key] = exc
        self._count_writes(conn, len(requests))
        return failures

    def bulk_delete(self, requests: Sequence[DeleteRequest]) -> dict[str, Exception]:
        conn = self._conn()
        failures: dict[str, Exception] = {}
        with transaction(conn):
            for request in requests:
                try:
                    self._remove(conn, request)
                except ETagMismatch as exc:
                    failures[request.key] = exc
        return failures

    def transact(self, operations: Sequence[SetRequest | DeleteRequest]) -> None:
        conn = self._conn()
        with transaction(conn):
            for op in operations:
                if isinstance(op, SetRequest):
                    self._write(conn, op)
                else:
                    self._remove(conn, op)
        self._count_writes(conn, len(operations))

    def _prefix_where(self, prefix: str) -> tuple[str, tuple[str, ...]]:
        """A key range that an index can serve: prefix <= key < prefix with its last char + 1."""
        if not prefix:
            return "1", ()
        last = ord(prefix[-1])
        if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
            return "substr(key, 1, ?) = ?", (str(len(prefix)), prefix)
        return "key >= ? AND key < ?", (prefix, prefix[:-1] + chr(last + 1))

    def keys(self, prefix: str) -> list[str]:
        where, args = self._prefix_where(prefix)
        rows = self._conn().execute(
            f"SELECT key FROM {self._t} WHERE {where} "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key",
            (*args, time.time()),
        )
        return [key for (key,) in rows if key.startswith(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        where, args = self._prefix_where(prefix)
        cur = self._conn().execute(f"DELETE FROM {self._t} WHERE {where}", args)
        return cur.rowcount


# --- pub/sub -----------------------------------------------------------------------------------


class SqlitePubSub(_SqliteComponent, PubSubComponent):
    """Messages are rows; each group of their topic gets a delivery row, leased by pullers.

    A message is deleted with its last delivery row, i.e. once every group has acked it.
    Delivery ids are message ids: stable across redeliveries, as in the memory component.
    """

    _MIN_PAUSE = 0.002  # first wait between polls for other processes' messages
    _MAX_PAUSE = 0.05

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._messages = m = self._table("messages")
        self._groups = self._table("groups")
        self._deliveries = d = self._table("deliveries")
        self._sql_publish = (
            f"INSERT INTO {m} (topic, data, metadata, published_at) VALUES (?, ?, ?, ?)"
        )
        self._sql_due = f"SELECT 1 FROM {d} WHERE group_id = ? AND visible_at <= ? LIMIT 1"
        self._sql_lease = (
            f"UPDATE {d} SET attempt = attempt + 1, leased = 1, visible_at = ? "
            "WHERE group_id = ? AND "
            f"message_id IN (SELECT message_id FROM {d} WHERE group_id = ? AND visible_at <= ? "
            "ORDER BY visible_at, message_id LIMIT ?) RETURNING message_id, attempt"
        )
        self._group_ids: dict[tuple[str, str], int] = {}

    def _ddl(self) -> tuple[str, ...]:
        m, g, d = self._messages, self._groups, self._deliveries
        return (
            f"CREATE TABLE IF NOT EXISTS {m} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT, published_at REAL NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {g} (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
            "name TEXT NOT NULL, UNIQUE (topic, name))",
            # leased: handed out and not nacked since, the only state extend() may renew.
            f"CREATE TABLE IF NOT EXISTS {d} (message_id INTEGER NOT NULL, "
            "group_id INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, "
            "leased INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL, "
            "PRIMARY KEY (message_id, group_id)) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {d}_due ON {d} (group_id, visible_at, message_id)",
            # Fan-out happens inside the INSERT of a message, so a publish is one statement.
            f"CREATE TRIGGER IF NOT EXISTS {m}_fan_out AFTER INSERT ON {m} BEGIN "
            f"INSERT INTO {d} (message_id, group_id, visible_at) "
            f"SELECT NEW.id, id, NEW.published_at FROM {g} WHERE topic = NEW.topic; END",
            # The last group's ack (or purge) deletes the message itself.
            f"CREATE TRIGGER IF NOT EXISTS {d}_trim AFTER DELETE ON {d} "
            f"WHEN NOT EXISTS (SELECT 1 FROM {d} WHERE message_id = OLD.message_id) BEGIN "
            f"DELETE FROM {m} WHERE id = OLD.message_id; END",
        )

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self._conn().execute(self._sql_publish, (topic, data, _dumps(metadata), time.time()))
        self._db.wake_pullers()

    def bulk_publish(
        self, topic: str, entries: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> dict[str, Exception]:
        conn = self._conn()
        now = time.time()
        with transaction(conn):
            conn.executemany(
                self._sql_publish, [(topic, data, _dumps(meta), now) for _, data, meta in entries]
            )
        self._db.wake_pullers()
        return {}

    def _group_id(self, topic: str, group: str, *, create: bool) -> int | None:
        gid = self._group_ids.get((topic, group))
        if gid is not None:
            return gid
        conn = self._conn()
        select = f"SELECT id FROM {self._groups} WHERE topic = ? AND name = ?"
        row = conn.execute(select, (topic, group)).fetchone()
        if row is None:
            if not create:
                return None
            with transaction(conn):
                row = conn.execute(select, (topic, group)).fetchone()
                if row is None:
                    row = (self._declare(conn, topic, group),)
        self._group_ids[(topic, group)] = row[0]
        return int(row[0])

    def _declare(self, conn: sqlite3.Connection, topic: str, group: str) -> int:
        first = conn.execute(
            f"SELECT 1 FROM {self._groups} WHERE topic = ? LIMIT 1", (topic,)
        ).fetchone() is None
        gid = conn.execute(
            f"INSERT INTO {self._groups} (topic, name) VALUES (?, ?)", (topic, group)
        ).lastrowid
        assert gid is not None
        if first:
            # Messages published while the topic had no group wait for its first group.
            conn.execute(
                f"INSERT INTO {self._deliveries} (message_id, group_id, visible_at) "
                f"SELECT id, ?, published_at FROM {self._messages} WHERE topic = ?",
                (gid, topic),
            )
        return gid

    def ensure_group(self, topic: str, group: str) -> None:
        self._group_id(topic, group, create=True)

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        gid = self._group_id(topic, group, create=True)
        assert gid is not None
        conn = self._conn()
        db = self._db
        deadline = time.monotonic() + timeout
        pause = self._MIN_PAUSE
        while True:
            seen = db.generation
            out = self._take(conn, gid, max_messages, lease)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            # A publish or nack of this process wakes us at once; other processes' writes are
            # found by the next poll, after a pause that grows while nothing comes.
            with db.changed:
                if db.generation == seen:
                    db.changed.wait(min(remaining, pause))
            pause = min(pause * 2, self._MAX_PAUSE)

    def _take(
        self, conn: sqlite3.Connection, gid: int, max_messages: int, lease: float
    ) -> list[Delivery]:
        now = time.time()
        # A read first: an idle poll must not take the write lock other processes need.
        if max_messages < 1 or conn.execute(self._sql_due, (gid, now)).fetchone() is None:
            return []
        leased = conn.execute(
            self._sql_lease, (now + lease, gid, gid, now, max_messages)
        ).fetchall()
        if not leased:
            return []
        leased.sort()
        attempts = dict(leased)
        rows = conn.execute(
            f"SELECT id, data, metadata FROM {self._messages} "
            f"WHERE id IN ({_placeholders(len(attempts))})",
            list(attempts),
        ).fetchall()
        bodies = {mid: (data, meta) for mid, data, meta in rows}
        return [
            Delivery(str(mid), bodies[mid][0], attempt, _loads(bodies[mid][1]))
            for mid, attempt in leased
            if mid in bodies
        ]

    @staticmethod
    def _message_ids(ids: Sequence[str]) -> list[int]:
        out = []
        for delivery_id in ids:
            try:
                out.append(int(delivery_id))
            except (TypeError, ValueError):
                continue  # not one of ours: like an unknown id, nothing to do
        return out

    def _update(
        self, topic: str, group: str, ids: Sequence[str], sql: str, *args: Any, where: str = ""
    ) -> int:
        gid = self._group_id(topic, group, create=False)
        message_ids = self._message_ids(ids)
        if gid is None or not message_ids:
            return 0
        conn = self._conn()
        changed = 0
        for chunk in _chunks(message_ids):
            cur = conn.execute(
                sql + f" WHERE {where}group_id = ? "
                f"AND message_id IN ({_placeholders(len(chunk))})",
                (*args, gid, *chunk),
            )
            changed += cur.rowcount
        return changed

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        self._update(topic, group, ids, f"DELETE FROM {self._deliveries}")

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        sql = f"UPDATE {self._deliveries} SET leased = 0, visible_at = ?"
        if self._update(topic, group, ids, sql, time.time() + delay):
            self._db.wake_pullers()

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        # A renewal that arrives after the consumer nacked (a lease keeper's round racing the
        # nack) must not hide the message for a whole lease.
        sql = f"UPDATE {self._deliveries} SET visible_at = ?"
        self._update(topic, group, ids, sql, time.time() + lease, where="leased = 1 AND ")

    def delete_group(self, topic: str, group: str) -> None:
        self._group_ids.pop((topic, group), None)
        conn = self._conn()
        with transaction(conn):
            row = conn.execute(
                f"SELECT id FROM {self._groups} WHERE topic = ? AND name = ?", (topic, group)
            ).fetchone()
            if row is not None:
                # Messages left with no delivery go with them (the trim trigger).
                conn.execute(f"DELETE FROM {self._deliveries} WHERE group_id = ?", (row[0],))
                conn.execute(f"DELETE FROM {self._groups} WHERE id = ?", (row[0],))

    def purge(self, topic: str, group: str) -> int:
        gid = self._group_id(topic, group, create=False)
        if gid is None:
            return 0
        # Only messages never handed out, as in the memory component; leased ones stay.
        cur = self._conn().execute(
            f"DELETE FROM {self._deliveries} WHERE group_id = ? AND attempt = 0", (gid,)
        )
        return cur.rowcount

    def backlog(self, topic: str, group: str) -> int:
        gid = self._group_id(topic, group, create=False)
        if gid is None:
            return 0
        row = self._conn().execute(
            f"SELECT count(*) FROM {self._deliveries} WHERE group_id = ? AND attempt = 0", (gid,)
        ).fetchone()
        return int(row[0])


# --- configuration -----------------------------------------------------------------------------


class SqliteConfiguration(_SqliteComponent, ConfigurationComponent):
    """Items in one table; every write also appends to a change log that watchers follow.

    A watcher thread checks ``PRAGMA data_version`` (which changes when any other connection
    commits) every ``poll_interval`` and reads the log entries past its last revision.
    """

    features = frozenset({Feature.WRITE, Feature.WATCH})

    LOG_RETENTION = 600.0  # seconds a change stays in the log for watchers to read

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.poll_interval = self.option("poll_interval", float, 0.02)
        if not 0 < self.poll_interval <= 5:
            raise SettingsError(
                self.source, "poll_interval", f"{self.poll_interval} is out of range",
                "give seconds between checks for changes, more than 0 and at most 5, e.g. 0.02",
            )
        self._items = self._table("configuration")
        self._log = self._table("configuration_log")
        self._watchers: list[tuple[str, ChangeCallback]] = []
        self._watch_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._next_trim = 0.0
        self._revision = 0

    def _ddl(self) -> tuple[str, ...]:
        i, lg = self._items, self._log
        return (
            # A rowid table: loading everything returns items in the order first stored.
            f"CREATE TABLE IF NOT EXISTS {i} (app_id TEXT NOT NULL, grp TEXT NOT NULL, "
            "label TEXT NOT NULL, key TEXT NOT NULL, content TEXT NOT NULL, tags TEXT, "
            "metadata TEXT, UNIQUE (app_id, grp, label, key))",
            f"CREATE TABLE IF NOT EXISTS {lg} (revision INTEGER PRIMARY KEY AUTOINCREMENT, "
            "batch INTEGER NOT NULL, app_id TEXT NOT NULL, grp TEXT NOT NULL, "
            "label TEXT NOT NULL, key TEXT NOT NULL, content TEXT NOT NULL, tags TEXT, "
            "metadata TEXT, deleted INTEGER NOT NULL, changed_at REAL NOT NULL)",
        )

    @staticmethod
    def _item(
        key: str, content: str, group: str, label: str, tags: str | None, metadata: str | None
    ) -> ConfigurationItem:
        return ConfigurationItem(key, content, group, label, _loads(tags), _loads(metadata))

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        conn = self._conn()
        select = (
            f"SELECT key, content, tags, metadata FROM {self._items} "
            "WHERE app_id = ? AND grp = ? AND label = ?"
        )
        if not keys:
            rows = conn.execute(select + " ORDER BY rowid", (app_id, group, label))
            return [self._item(k, c, group, label, t, m) for k, c, t, m in rows]
        found: dict[str, ConfigurationItem] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            sql = select + f" AND key IN ({_placeholders(len(chunk))})"
            for k, c, t, m in conn.execute(sql, (app_id, group, label, *chunk)):
                found[k] = self._item(k, c, group, label, t, m)
        return [found[k] for k in keys if k in found]

    def _append_log(
        self, conn: sqlite3.Connection, app_id: str, changes: list[ConfigurationChange]
    ) -> None:
        now = time.time()
        batch = int.from_bytes(os.urandom(7), "big")
        conn.executemany(
            f"INSERT INTO {self._log} (batch, app_id, grp, label, key, content, tags, metadata, "
            "deleted, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (batch, app_id, c.item.group, c.item.label, c.item.key, c.item.content,
                 _dumps(c.item.tags), _dumps(c.item.metadata), int(c.deleted), now)
                for c in changes
            ],
        )
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + 60
            conn.execute(
                f"DELETE FROM {self._log} WHERE changed_at < ?", (now - self.LOG_RETENTION,)
            )

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        if not items:
            return
        conn = self._conn()
        with transaction(conn):
            conn.executemany(
                f"INSERT INTO {self._items} (app_id, grp, label, key, content, tags, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, grp, label, key) DO UPDATE "
                "SET content = excluded.content, tags = excluded.tags, "
                "metadata = excluded.metadata",
                [
                    (app_id, i.group, i.label, i.key, i.content, _dumps(i.tags),
                     _dumps(i.metadata))
                    for i in items
                ],
            )
            self._append_log(conn, app_id, [ConfigurationChange(i) for i in items])
        self._wake_watchers()

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        conn = self._conn()
        gone: list[ConfigurationChange] = []
        with transaction(conn):
            for key in keys:
                row = conn.execute(
                    f"DELETE FROM {self._items} WHERE app_id = ? AND grp = ? AND label = ? "
                    "AND key = ? RETURNING content, tags, metadata",
                    (app_id, group, label, key),
                ).fetchone()
                if row is not None:
                    gone.append(ConfigurationChange(self._item(key, row[0], group, label, *row[1:]),
                                                    True))
            if gone:
                self._append_log(conn, app_id, gone)
        if gone:
            self._wake_watchers()

    def _wake_watchers(self) -> None:
        with self._db.mutex:
            wakes = list(self._db.watcher_wakes)
        for wake in wakes:
            wake.set()

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        entry = (app_id, callback)
        with self._watch_lock:
            if self._watcher is None:
                # Changes committed from here on are reported; earlier ones are not.
                self._start_watcher(self._last_revision(self._conn()))
            self._watchers.append(entry)

        def stop() -> None:
            with self._watch_lock:
                if entry in self._watchers:
                    self._watchers.remove(entry)

        return stop

    def _last_revision(self, conn: sqlite3.Connection) -> int:
        (revision,) = conn.execute(f"SELECT coalesce(max(revision), 0) FROM {self._log}").fetchone()
        return int(revision)

    def _start_watcher(self, revision: int) -> None:
        self._revision = revision  # the last change reported; read by restart_after_fork
        self._watcher = threading.Thread(
            target=self._follow, args=(revision,), daemon=True,
            name=f"capa-sqlite-config-{self.name}",
        )
        with self._db.mutex:
            self._db.watcher_wakes.add(self._wake)
        self._watcher.start()
        _watching.add(self)

    def restart_after_fork(self) -> None:
        """In a forked child: the watcher thread did not survive fork(), so start another."""
        self._watch_lock = threading.Lock()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._watcher = None
        if self._watchers and not self._closed:
            # The child's listeners are copies of the parent's as of the fork: they have seen
            # what the parent's watcher reported, and nothing after.
            self._start_watcher(self._revision)

    def _follow(self, revision: int) -> None:
        """The watcher thread: poll for commits, read the log past ``revision``, report."""
        version = None
        try:
            while not self._stopped.is_set():
                try:
                    conn = self._conn()
                    (now_version,) = conn.execute("PRAGMA data_version").fetchone()
                    if now_version != version or self._wake.is_set():
                        self._wake.clear()
                        version = now_version
                        revision = self._revision = self._report(conn, revision)
                except Exception:  # a busy or vanished file: try again next round, never die
                    log.exception("configuration watcher of %s failed; retrying", self.name)
                    self._stopped.wait(0.5)
                self._wake.wait(self.poll_interval)
        finally:
            self._db.forget_thread()

    def _report(self, conn: sqlite3.Connection, revision: int) -> int:
        rows = conn.execute(
            f"SELECT revision, batch, app_id, grp, label, key, content, tags, metadata, deleted "
            f"FROM {self._log} WHERE revision > ? ORDER BY revision",
            (revision,),
        ).fetchall()
        batches: list[tuple[int, str, list[ConfigurationChange]]] = []
        for rev, batch, app_id, group, label, key, content, tags, metadata, deleted in rows:
            revision = rev
            change = ConfigurationChange(
                self._item(key, content, group, label, tags, metadata), bool(deleted)
            )
            if batches and batches[-1][0] == batch:
                batches[-1][2].append(change)
            else:
                batches.append((batch, app_id, [change]))
        for _, app_id, changes in batches:
            with self._watch_lock:
                callbacks = [cb for a, cb in self._watchers if a == app_id]
            for callback in callbacks:
                try:
                    callback(changes)
                except Exception:
                    log.exception("configuration callback %r failed", callback)
        return revision

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(5)
        with self._db.mutex:
            self._db.watcher_wakes.discard(self._wake)
        super().close()


# --- lock --------------------------------------------------------------------------------------


class SqliteLock(_SqliteComponent, LockComponent):
    """Locks are rows (resource, owner, expiry in epoch seconds); an expired row is free."""

    _SWEEP_EVERY = 1024  # lock attempts of this component between deletions of expired rows

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._t = t = self._table("locks")
        self._sql_take = (
            f"INSERT INTO {t} (resource_id, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (resource_id) DO UPDATE SET owner = excluded.owner, "
            f"expires_at = excluded.expires_at WHERE {t}.expires_at <= ?"
        )
        self._attempts = 0

    def _ddl(self) -> tuple[str, ...]:
        return (
            f"CREATE TABLE IF NOT EXISTS {self._t} (resource_id TEXT PRIMARY KEY, "
            "owner TEXT NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID",
        )

    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        now = time.time()
        conn = self._conn()
        cur = conn.execute(self._sql_take, (resource_id, owner, now + expiry, now))
        self._attempts += 1
        if self._attempts % self._SWEEP_EVERY == 0:  # rows of resources nobody locks again
            conn.execute(f"DELETE FROM {self._t} WHERE expires_at <= ?", (now,))
        return cur.rowcount == 1

    def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        conn = self._conn()
        with transaction(conn):
            now = time.time()
            row = conn.execute(
                f"SELECT owner, expires_at FROM {self._t} WHERE resource_id = ?", (resource_id,)
            ).fetchone()
            if row is None or row[1] <= now:
                if row is not None:  # expired: free it while we are here
                    conn.execute(f"DELETE FROM {self._t} WHERE resource_id = ?", (resource_id,))
                return UnlockStatus.LOCK_DOES_NOT_EXIST
            if row[0] != owner:
                return UnlockStatus.LOCK_BELONGS_TO_OTHERS
            conn.execute(f"DELETE FROM {self._t} WHERE resource_id = ?", (resource_id,))
            return UnlockStatus.SUCCESS

    def extend(self, resource_id: str, owner: str, expiry: float) -> bool:
        now = time.time()
        cur = self._conn().execute(
            f"UPDATE {self._t} SET expires_at = ? WHERE resource_id = ? AND owner = ? "
            "AND expires_at > ?",
            (now + expiry, resource_id, owner, now),
        )
        return cur.rowcount == 1
