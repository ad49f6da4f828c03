"""PostgreSQL components (psycopg 3 and psycopg_pool): state, pub/sub, lock and configuration.

URL form ``postgresql://user:password@host:5432/db`` (``url``), or Dapr's ``connectionString``
(a URL or a libpq ``key=value`` string); ``password``, ``user``, ``host``, ``port`` and ``dbname``
override parts of it (a password usually comes from a secret store). Each component keeps its
own connection pool, opened on first use, and creates its tables on first use (IF NOT EXISTS),
named ``<table_prefix><role>`` (default prefix ``capa_``; ``tableName`` names the main table;
``schema`` puts them in a schema).

- state: one row per key (value bytea, etag, expires_at); ETags and first-write are conditional
  UPDATE/INSERT statements, expired rows are invisible and purged now and then, transactions are
  real ones, bulk reads are one query. Features: ETAG, TTL, TRANSACTIONAL, KEYS.
- pub/sub: one queue table per component; a message is copied to every group of its topic when
  published (a topic without groups keeps it for its first group), taken with
  ``FOR UPDATE SKIP LOCKED`` under a lease (nack and extend move the lease end), and a waiting
  pull is woken by LISTEN/NOTIFY, sent only while someone waits on the topic.
- lock: a lease table written with ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired``.
- configuration: a table keyed by (app_id, group, label, key); changes are sent with NOTIFY in
  the writing transaction, so watchers in every process see them.

Other settings: ``pool_min_size`` (1), ``pool_max_size`` / ``maxConns`` (8), ``pool_timeout``
(5 s), ``connect_timeout`` (5 s), ``timeout`` / ``timeoutInSeconds`` (statement timeout),
``cleanup_interval`` / ``cleanupIntervalInSeconds`` (300 s, state). Lost connections are retried
by the dispatch point on fresh ones; LISTEN connections reconnect by themselves; a forked child
opens its own connections.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

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

T = TypeVar("T")
log = logging.getLogger("capa_core.postgres")

DEFAULT_PREFIX = "capa_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_IDENTIFIER = 63  # PostgreSQL silently truncates longer names, which could merge tables
_NOTIFY_LIMIT = 7900  # a NOTIFY payload must stay under 8000 bytes
_LISTEN_TICK = 0.25  # how often a listener thread looks at its stop flag
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open on the connection
_MARK_SECONDS = 60  # how long a pub/sub waiting mark lasts; renewed at half time
_SETTLE = 0.25  # after marking, a waiting pull looks again this soon (see PostgresPubSub.pull)
# Tables this process has already created, so new components on the same tables skip the DDL.
_created: set[tuple[str, str]] = set()
_created_lock = threading.Lock()

# After fork() a child must not touch its parent's connections (not even close them: closing
# says goodbye to the server on the parent's socket). Objects holding connections, locks or
# threads forget them in the child and start afresh; what they held is parked here for good.
_forkable: weakref.WeakSet[Any] = weakref.WeakSet()
_orphans: list[Any] = []


def _after_fork_in_child() -> None:
    global _created_lock
    _created_lock = threading.Lock()
    for holder in list(_forkable):
        holder.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _driver(component: Component) -> Any:
    """Import psycopg lazily; a missing driver is a settings problem reported at start-up."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401  (imported here so a missing pool fails early too)
    except ImportError as exc:
        raise SettingsError(
            component.source, "type", f"needs psycopg 3 and psycopg_pool ({exc})",
            "pip install 'capa-python[postgres]'",
        ) from None
    cls = type(component)
    if not cls.transient_errors:
        # Lost connections, a restarting server, an exhausted pool and lost serialization races
        # are worth retrying; the pool replaces broken connections in between.
        cls.transient_errors = (
            psycopg.OperationalError,
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
        )
    return psycopg


def _translate(component: Component, exc: Exception) -> CapaError | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None or not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, component.transient_errors):
        return None  # the dispatch point turns these into ComponentUnavailable
    state = f" [{exc.sqlstate}]" if getattr(exc, "sqlstate", None) else ""
    return CapaError(f"{component.type_name} component {component.name!r}: {exc}{state}")


class _Database:
    """Connection settings, the lazily opened pool and lazily created tables of one component."""

    def __init__(
        self,
        component: Component,
        tables: Mapping[str, tuple[str, str]],
        ddl: Callable[[Mapping[str, str]], list[str]],
    ) -> None:
        """``tables``: role -> (default name after the prefix, its columns); ``ddl`` makes them."""
        self.psycopg = _driver(component)
        self.component = component
        self.conninfo = _conninfo(component, self.psycopg)
        option = component.option
        self.schema = _identifier(component, "schema", option("schema", str, ""))
        prefix = option("table_prefix", str, DEFAULT_PREFIX, "tablePrefix")
        if prefix:
            _identifier(component, "table_prefix", prefix)
        main = option("table", str, "", "tableName", "table_name")
        names: dict[str, str] = {}
        self.columns = {role: frozenset(columns.split()) for role, (_, columns) in tables.items()}
        for role, (suffix, _) in tables.items():
            name = prefix + suffix
            if main:  # the main table takes the given name; the others derive from it
                name = main if role == "main" else f"{main}_{suffix.rsplit('_', 1)[-1]}"
            names[role] = _identifier(component, "table" if main else "table_prefix", name, 8)
        self.tables = {role: self.qualified(name) for role, name in names.items()}
        channel = f"{self.schema}.{names['main']}" if self.schema else names["main"]
        self.channel = channel[:_MAX_IDENTIFIER]
        self.min_size = option("pool_min_size", int, 1)
        self.max_size = option("pool_max_size", int, 8, "maxConns")
        self.pool_timeout = option("pool_timeout", float, 5.0)
        if self.min_size < 0 or self.max_size < max(1, self.min_size):
            raise SettingsError(
                component.source, "pool_max_size",
                f"must be at least 1 and at least pool_min_size ({self.min_size})",
                "set pool_max_size >= pool_min_size >= 0",
            )
        if self.pool_timeout <= 0:
            raise SettingsError(
                component.source, "pool_timeout", "must be positive", "e.g. pool_timeout = 5"
            )
        self._ddl = ddl
        self._pool: Any = None
        self._ready = False
        self._lock = threading.Lock()
        self._last_check = 0.0
        self._idle: list[Any] = []
        self._idle_lock = threading.Lock()
        self._waiting = 0
        _forkable.add(self)

    def after_fork(self) -> None:
        _orphans.append((self._pool, self._idle))
        self._pool, self._idle, self._ready, self._waiting = None, [], False, 0
        self._lock, self._idle_lock = threading.Lock(), threading.Lock()

    def qualified(self, name: str) -> str:
        sql = self.psycopg.sql
        parts = (self.schema, name) if self.schema else (name,)
        return str(sql.Identifier(*parts).as_string(None))

    # --- connections ------------------------------------------------------------------------

    def _open(self) -> Any:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                pool = ConnectionPool(
                    self.conninfo,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    kwargs={"autocommit": True},
                    configure=_configure,
                    timeout=self.pool_timeout,
                    name=f"capa-{self.component.type_name}-{self.component.name}",
                    num_workers=1,
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            if not self._ready:
                self._create_tables(self._pool)
                self._ready = True
            return self._pool

    def _create_tables(self, pool: Any) -> None:
        key = (self.conninfo, self.tables["main"])
        with _created_lock:
            if key in _created:
                return
        statements = self._ddl(self.tables)
        if self.schema:
            statements.insert(0, f"CREATE SCHEMA IF NOT EXISTS {self.qualified_schema()}")
        with pool.connection() as conn:
            try:
                with conn.transaction():
                    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%s))", ("capa-ddl:" + self.channel,)
                    )
                    for statement in statements:
                        conn.execute(statement)
            except self.psycopg.Error:
                self._check_columns(conn)
                raise
            self._check_columns(conn)
        with _created_lock:
            _created.add(key)

    def _check_columns(self, conn: Any) -> None:
        """IF NOT EXISTS keeps a table someone else made (say Dapr's own state table): say so
        now, naming the setting, rather than fail on every query."""
        for role, table in self.tables.items():
            try:
                cursor = conn.execute(f"SELECT * FROM {table} LIMIT 0")
            except self.psycopg.errors.UndefinedTable:
                continue
            missing = sorted(self.columns[role] - {c.name for c in cursor.description})
            if missing:
                raise SettingsError(
                    self.component.source, "table_prefix",
                    f"table {table} exists without the columns {', '.join(missing)}: it was not "
                    "made by this component",
                    "point table_prefix (or tableName) at a new table, or drop the old one",
                )

    def qualified_schema(self) -> str:
        return str(self.psycopg.sql.Identifier(self.schema).as_string(None))

    # Connections taken from the pool stay checked out on a LIFO list between calls: a pool
    # checkout and return costs a sixth of a loopback round trip, a list pop and append almost
    # nothing (both atomic under the GIL). The pool still makes, limits, checks and replaces
    # connections. A caller finding the list empty counts itself in ``_waiting`` and waits on
    # the pool; a releaser that then sees a waiter hands idle connections over to the pool. The
    # waiter looks at the list once more after counting itself, so no release slips between.

    def _acquire(self, pool: Any) -> Any:
        with self._idle_lock:
            self._waiting += 1
        try:
            try:
                return self._idle.pop()
            except IndexError:
                return pool.getconn()
        finally:
            with self._idle_lock:
                self._waiting -= 1

    def _release(self, pool: Any, conn: Any) -> None:
        if conn.pgconn.transaction_status == _IDLE and pool is self._pool:
            self._idle.append(conn)
            if self._waiting:
                self._hand_over(pool)
        else:
            pool.putconn(conn)  # a connection in a bad state is rolled back or thrown away there

    def _hand_over(self, pool: Any, everything: bool = False) -> None:
        """Give idle connections back to the pool: while someone waits there, or all of them."""
        with self._idle_lock:
            while everything or self._waiting:
                try:
                    conn = self._idle.pop()  # one at a time: the fast path pops without the lock
                except IndexError:
                    return
                pool.putconn(conn)

    def run(self, work: Callable[[Any], T], *, again: bool = True) -> T:
        """``work(cursor)`` on a pooled autocommit connection (one cursor kept per connection)."""
        pool = self._pool if self._ready else self._open()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._acquire(pool)
        try:
            result = work(conn.capa_cursor)
        except self.psycopg.Error as exc:
            self._failed(pool, conn, exc)
            if again and isinstance(exc, self.psycopg.errors.UndefinedTable):
                return self.run(work, again=False)  # nothing was applied: safe to redo
            raise
        except BaseException:
            self._release(pool, conn)
            raise
        self._release(pool, conn)
        return result

    def execute(self, query: str, params: Sequence[Any] | Mapping[str, Any], want: int) -> Any:
        """One autocommit statement; ``want`` picks the result: ONE row, ALL rows or COUNT.

        run() unrolled for the hot path, where every call and lookup shows: a statement that
        succeeded leaves its connection idle, with nothing to check.
        """
        pool = self._pool if self._ready else self._open()
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._acquire(pool)
        try:
            result = _result(conn.capa_cursor.execute(query, params), want)
        except self.psycopg.Error as exc:
            self._failed(pool, conn, exc)
            if isinstance(exc, self.psycopg.errors.UndefinedTable):
                return self.run(lambda cur: _result(cur.execute(query, params), want), again=False)
            raise
        if pool is self._pool:
            self._idle.append(conn)
            if self._waiting:
                self._hand_over(pool)
        else:
            pool.putconn(conn)
        return result

    def _failed(self, pool: Any, conn: Any, exc: Exception) -> None:
        """Give a connection back after an error; after a lost one, test the others too."""
        if isinstance(exc, self.psycopg.errors.UndefinedTable):
            # Someone dropped our tables (a test cleaning up): create them again.
            with _created_lock:
                _created.discard((self.conninfo, self.tables["main"]))
            self._ready = False
        if not (conn.broken or conn.closed):
            self._release(pool, conn)
            return
        pool.putconn(conn)  # the pool throws it away and makes a new one
        self._hand_over(pool, everything=True)
        now = time.monotonic()
        if now - self._last_check > 1.0:
            # The server probably restarted or cut us off: the idle connections are dead too.
            self._last_check = now
            try:
                pool.check()
            except Exception:  # the retry will report what is wrong
                log.debug("pool check after a lost connection failed", exc_info=True)

    def connect(self) -> Any:
        """A dedicated autocommit connection outside the pool (for LISTEN)."""
        return self.psycopg.connect(self.conninfo, autocommit=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._ready = self._pool, None, False
        if pool is not None:
            self._hand_over(pool, everything=True)
            pool.close(timeout=2.0)


ONE, ALL, COUNT = 1, 2, 3  # what _Database.execute returns


def _result(cursor: Any, want: int) -> Any:
    if want == ONE:
        return cursor.fetchone()
    return cursor.fetchall() if want == ALL else cursor.rowcount


def _configure(conn: Any) -> None:
    # One cursor per pooled connection, reused by every call: a new cursor per call costs as
    # much as a third of a loopback round trip.
    conn.capa_cursor = conn.cursor()


def _identifier(component: Component, key: str, value: str, reserve: int = 0) -> str:
    if value and (not _IDENTIFIER.match(value) or len(value) + reserve > _MAX_IDENTIFIER):
        raise SettingsError(
            component.source, key,
            f"{value!r} is not a plain SQL name of at most {_MAX_IDENTIFIER - reserve} characters",
            "use letters, digits and underscores, starting with a letter or underscore",
        )
    return value


def _conninfo(component: Component, psycopg: Any) -> str:
    """The libpq connection string from ``url`` / ``connectionString`` and part overrides."""
    for name in ("url", "connectionString", "connection_string"):
        found = component.setting(name)
        if found is not None and found[1]:
            key, raw = found
            break
    else:
        raise SettingsError(
            component.source, "url", "is missing",
            'set url = "postgresql://user:password@127.0.0.1:5432/dbname" '
            "(or Dapr's connectionString)",
        )
    if not isinstance(raw, str):
        raise SettingsError(component.source, key, f"{raw!r} is not a string", "quote it")
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme and scheme not in ("postgres", "postgresql"):
        raise SettingsError(
            component.source, key, f"{scheme}:// is not a PostgreSQL URL",
            "write postgresql://user:password@host:5432/dbname",
        )
    overrides: dict[str, str] = {}
    for name, aliases in (
        ("password", ()), ("user", ("username",)), ("host", ()), ("port", ()),
        ("dbname", ("database",)), ("sslmode", ()),
        ("connect_timeout", ("connectTimeout",)),
    ):
        value = component.option(name, str, "", *aliases)
        if value:
            overrides[name] = value
    overrides.setdefault("connect_timeout", "5")  # never hang on an unreachable host
    timeout = component.option("timeout", float, 0.0, "timeoutInSeconds")
    if timeout < 0:
        raise SettingsError(component.source, "timeout", "must not be negative", "e.g. 20")
    if timeout:
        overrides["options"] = f"-c statement_timeout={int(timeout * 1000)}"
    try:
        conninfo = str(psycopg.conninfo.make_conninfo(raw, **overrides))
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise SettingsError(
            component.source, key, f"is not a valid connection string ({exc})",
            "write postgresql://user:password@host:5432/dbname or 'host=... dbname=...'",
        ) from None
    return conninfo


# --- a LISTEN connection on a thread -----------------------------------------------------------


class _Listener:
    """A dedicated connection LISTENing on one channel; a daemon thread hands payloads over.

    ``start`` connects in the caller's thread, so a server that is down shows up there; after
    that the thread reconnects by itself with backoff, and ``on_connect`` runs on every
    (re)connection so waiters can re-check what they may have missed.
    """

    def __init__(
        self,
        db: _Database,
        deliver: Callable[[str], None],
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._deliver = deliver
        self._on_connect = on_connect
        self.connected = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        conn = self._connect()
        self._thread = threading.Thread(
            target=self._run, args=(conn,), daemon=True,
            name=f"capa-listen-{self._db.component.name}",
        )
        self._thread.start()

    def _connect(self) -> Any:
        conn = self._db.connect()
        try:
            channel = self._db.psycopg.sql.Identifier(self._db.channel).as_string(None)
            conn.execute(f"LISTEN {channel}")
        except BaseException:
            conn.close()
            raise
        self.connected.set()
        self._on_connect()
        return conn

    def _run(self, conn: Any) -> None:
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                    backoff = 0.05
                for notify in conn.notifies(timeout=_LISTEN_TICK):
                    self._deliver(notify.payload)
            except Exception as exc:  # whatever happened, listen again on a new connection
                self.connected.clear()
                log.warning("LISTEN connection of %s lost (%s); reconnecting",
                            self._db.component.name, exc)
                if conn is not None:
                    conn.close()
                conn = None
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        self.connected.clear()
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Ask the thread to end; it closes its connection within a fraction of a second."""
        self._stopped.set()


# --- state -------------------------------------------------------------------------------------

_LIVE = "(expires_at IS NULL OR expires_at > now())"
_EXPIRY = "now() + %s::float8 * interval '1 second'"


def _state_ddl(t: Mapping[str, str]) -> list[str]:
    index = _index_name(t["main"], "expires")
    return [
        f"""CREATE TABLE IF NOT EXISTS {t["main"]} (
            key text COLLATE "C" PRIMARY KEY,
            value bytea NOT NULL,
            etag text NOT NULL,
            expires_at timestamptz
        )""",
        f"CREATE INDEX IF NOT EXISTS {index} ON {t['main']} (expires_at) "
        "WHERE expires_at IS NOT NULL",
    ]


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _etag() -> str:
    return os.urandom(8).hex()


class _OnDatabase(Component):
    """A component whose middleware is the PostgreSQL database of its ``_db``."""

    _db: _Database

    def ping(self) -> None:
        self._db.execute("SELECT 1", (), ONE)


class PostgresState(_OnDatabase, StateComponent):
    kind = "postgres"
    features = frozenset({Feature.ETAG, Feature.TTL, Feature.TRANSACTIONAL, Feature.KEYS})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._db = _Database(
            self, {"main": ("state", "key value etag expires_at")}, _state_ddl
        )
        self.cleanup_interval = self.option(
            "cleanup_interval", float, 300.0, "cleanupIntervalInSeconds"
        )
        self._next_cleanup = time.monotonic() + self.cleanup_interval
        t = self._db.tables["main"]
        self._get = (
            f"SELECT value, etag, date_part('epoch', expires_at) FROM {t} "
            f"WHERE key = %s AND {_LIVE}"
        )
        self._bulk_get = (
            f"SELECT key, value, etag, date_part('epoch', expires_at) FROM {t} "
            f"WHERE key = ANY(%s) AND {_LIVE}"
        )
        insert = (
            f"INSERT INTO {t} AS old (key, value, etag, expires_at) VALUES (%s, %s, %s, {_EXPIRY}) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, etag = EXCLUDED.etag, "
            "expires_at = EXCLUDED.expires_at"
        )
        self._upsert = insert
        # An expired row counts as absent, so first-write may replace it.
        self._insert_new = insert + " WHERE old.expires_at <= now()"
        self._update_if = (
            f"UPDATE {t} SET value = %s, etag = %s, expires_at = {_EXPIRY} "
            f"WHERE key = %s AND etag = %s AND {_LIVE}"
        )
        self._delete = f"DELETE FROM {t} WHERE key = %s"
        self._delete_if = f"DELETE FROM {t} WHERE key = %s AND etag = %s AND {_LIVE}"
        self._keys = f"SELECT key FROM {t} WHERE key LIKE %s AND {_LIVE} ORDER BY key"
        self._delete_like = f"DELETE FROM {t} WHERE key LIKE %s"
        self._purge = f"DELETE FROM {t} WHERE expires_at <= now()"

    def get(self, key: str) -> StoredValue | None:
        row = self._db.execute(self._get, (key,), ONE)
        return None if row is None else StoredValue(*row)

    def bulk_get(self, keys: Sequence[str]) -> list[StoredValue | None]:
        found = {
            row[0]: StoredValue(row[1], row[2], row[3])
            for row in self._db.execute(self._bulk_get, (list(keys),), ALL)
        }
        return [found.get(key) for key in keys]

    def _write(self, cur: Any, request: SetRequest) -> str:
        key, value, etag, first_write, ttl = request
        new = _etag()
        if etag is not None:
            cur.execute(self._update_if, (value, new, ttl, key, etag))
            if cur.rowcount != 1:
                raise ETagMismatch(key)
        elif first_write:
            cur.execute(self._insert_new, (key, value, new, ttl))
            if cur.rowcount != 1:
                raise ETagMismatch(key, "first-write: the key exists and no etag was given")
        else:
            cur.execute(self._upsert, (key, value, new, ttl))
        return new

    def _remove(self, cur: Any, request: DeleteRequest) -> None:
        if request.etag is None:
            cur.execute(self._delete, (request.key,))
        elif cur.execute(self._delete_if, (request.key, request.etag)).rowcount != 1:
            raise ETagMismatch(request.key)

    def set(self, request: SetRequest) -> str:
        if request.ttl is not None and time.monotonic() >= self._next_cleanup:
            self._cleanup()
        key, value, etag, first_write, ttl = request
        if etag is None and not first_write:  # the common case: one statement, nothing to check
            new = _etag()
            self._db.execute(self._upsert, (key, value, new, ttl), COUNT)
            return new
        return self._db.run(lambda cur: self._write(cur, request))

    def _cleanup(self) -> None:
        """Drop expired rows (they are already invisible); at most once per interval."""
        self._next_cleanup = time.monotonic() + max(self.cleanup_interval, 1.0)
        if self.cleanup_interval > 0:
            removed = self._db.execute(self._purge, (), COUNT)
            log.debug("%s: purged %d expired keys", self.name, removed)

    def delete(self, request: DeleteRequest) -> None:
        self._db.run(lambda cur: self._remove(cur, request))

    def bulk_set(self, requests: Sequence[SetRequest]) -> dict[str, Exception]:
        def work(cur: Any) -> dict[str, Exception]:
            failures: dict[str, Exception] = {}
            for request in requests:
                try:
                    self._write(cur, request)
                except ETagMismatch as exc:
                    failures[request.key] = exc
            return failures

        return self._db.run(work)

    def bulk_delete(self, requests: Sequence[DeleteRequest]) -> dict[str, Exception]:
        def work(cur: Any) -> dict[str, Exception]:
            failures: dict[str, Exception] = {}
            for request in requests:
                try:
                    self._remove(cur, request)
                except ETagMismatch as exc:
                    failures[request.key] = exc
            return failures

        return self._db.run(work)

    def transact(self, operations: Sequence[SetRequest | DeleteRequest]) -> None:
        def work(cur: Any) -> None:
            with cur.connection.transaction():
                for op in operations:
                    if isinstance(op, SetRequest):
                        self._write(cur, op)
                    else:
                        self._remove(cur, op)

        self._db.run(work)

    def keys(self, prefix: str) -> list[str]:
        return [row[0] for row in self._db.execute(self._keys, (_like_prefix(prefix),), ALL)]

    def delete_prefix(self, prefix: str) -> int:
        return int(self._db.execute(self._delete_like, (_like_prefix(prefix),), COUNT))

    def translate_error(self, exc: Exception) -> CapaError | None:
        return _translate(self, exc)

    def close(self) -> None:
        self._db.close()


# --- pub/sub -----------------------------------------------------------------------------------


def _pubsub_ddl(t: Mapping[str, str]) -> list[str]:
    index = _index_name(t["main"], "queue")
    return [
        # waiting_until: while in the future, a consumer of the group blocks waiting for
        # messages now and then, so a publish sends NOTIFY; without one it saves the NOTIFY,
        # about a tenth of a publish.
        f"""CREATE TABLE IF NOT EXISTS {t["groups"]} (
            topic text NOT NULL,
            grp text NOT NULL,
            seq bigserial,
            waiting_until timestamptz,
            PRIMARY KEY (topic, grp)
        )""",
        f"ALTER TABLE {t['groups']} ADD COLUMN IF NOT EXISTS waiting_until timestamptz",
        # grp '' holds messages published while the topic had no group: its first group
        # adopts them. visible_at is the lease end of a taken message, or when a nacked one
        # may go out again.
        f"""CREATE TABLE IF NOT EXISTS {t["main"]} (
            id bigserial PRIMARY KEY,
            topic text NOT NULL,
            grp text NOT NULL,
            payload bytea NOT NULL,
            metadata jsonb NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            visible_at timestamptz NOT NULL DEFAULT now()
        )""",
        f"CREATE INDEX IF NOT EXISTS {index} ON {t['main']} (topic, grp, id)",
    ]


def _index_name(qualified: str, suffix: str) -> str:
    """The (unqualified, quoted) name of an index on the table ``qualified``."""
    table = qualified.rsplit(".", 1)[-1].strip('"')
    return '"' + (table + "_" + suffix)[:_MAX_IDENTIFIER] + '"'


class _Wakeups:
    """Per-topic counters bumped by NOTIFY; a pull waits for its topic's counter to move."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._topics: dict[str, int] = {}
        self._epoch = 0  # bumped on every (re)connection of the listener: re-check everything

    def seen(self, topic: str) -> tuple[int, int]:
        return self._epoch, self._topics.get(topic, 0)

    def bump(self, topic: str) -> None:
        with self._changed:
            self._topics[topic] = self._topics.get(topic, 0) + 1
            self._changed.notify_all()

    def bump_all(self) -> None:
        with self._changed:
            self._epoch += 1
            self._changed.notify_all()

    def wait(self, topic: str, seen: tuple[int, int], timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.seen(topic) != seen, timeout)


class PostgresPubSub(_OnDatabase, PubSubComponent):
    kind = "postgres"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        db = self._db = _Database(
            self,
            {
                "main": ("pubsub_messages", "id topic grp payload metadata attempt visible_at"),
                "groups": ("pubsub_groups", "topic grp seq waiting_until"),
            },
            _pubsub_ddl,
        )
        self._jsonb = db.psycopg.types.json.Jsonb
        m, g = db.tables["main"], db.tables["groups"]
        # One row per group of the topic, or one for the backlog ('') when it has none; a
        # NOTIFY, when someone waits on the topic, goes out with the commit.
        # Parameters (positional: cheaper to bind than named ones on this hot path): topic,
        # topic, payload, metadata, channel, topic.
        self._publish = (
            "WITH g AS MATERIALIZED (SELECT coalesce(g.grp, '') AS grp, g.waiting_until "
            f"FROM (VALUES (1)) AS one LEFT JOIN {g} g ON g.topic = %s), "
            f"queued AS (INSERT INTO {m} (topic, grp, payload, metadata) "
            "SELECT %s, grp, %s, %s FROM g) "
            "SELECT pg_notify(%s, %s) FROM g WHERE waiting_until > now() LIMIT 1"
        )
        self._take = (
            f"WITH next AS (SELECT id FROM {m} WHERE topic = %s AND grp = %s "
            "AND visible_at <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {m} m SET attempt = m.attempt + 1, visible_at = {_EXPIRY} FROM next "
            "WHERE m.id = next.id RETURNING m.id, m.payload, m.attempt, m.metadata"
        )
        # When a pull finds nothing: adopt messages that raced the first group's creation,
        # mark the group as waiting (when its mark is old), and learn when the next leased or
        # delayed message comes due.
        self._idle = (
            f"WITH adopted AS (UPDATE {m} SET grp = %(group)s WHERE topic = %(topic)s "
            "AND grp = '' AND %(first)s RETURNING 1), "
            f"marked AS (UPDATE {g} SET waiting_until = now() + interval '{_MARK_SECONDS} "
            "seconds' WHERE topic = %(topic)s AND grp = %(group)s AND %(mark)s) "
            "SELECT (SELECT count(*) FROM adopted), date_part('epoch', min(visible_at) - now()) "
            f"FROM {m} WHERE topic = %(topic)s AND grp = %(group)s AND visible_at > now()"
        )
        self._ack = f"DELETE FROM {m} WHERE id = ANY(%s)"
        self._ack_one = f"DELETE FROM {m} WHERE id = %s"  # the usual case: no array to build
        self._nack = (
            f"WITH later AS (UPDATE {m} SET visible_at = now() + %(delay)s::float8 * "
            "interval '1 second' WHERE id = ANY(%(ids)s)) SELECT pg_notify(%(channel)s, "
            f"%(topic)s) FROM {g} WHERE topic = %(topic)s AND waiting_until > now() LIMIT 1"
        )
        self._extend = f"UPDATE {m} SET visible_at = {_EXPIRY} WHERE id = ANY(%s)"
        self._purge = f"DELETE FROM {m} WHERE topic = %s AND grp = %s AND attempt = 0"
        self._backlog = f"SELECT count(*) FROM {m} WHERE topic = %s AND grp = %s AND attempt = 0"
        self._add_group = f"INSERT INTO {g} (topic, grp) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        self._first_group = f"SELECT grp FROM {g} WHERE topic = %s ORDER BY seq LIMIT 1"
        self._adopt = f"UPDATE {m} SET grp = %s WHERE topic = %s AND grp = ''"
        self._drop_group = f"DELETE FROM {g} WHERE topic = %s AND grp = %s"
        self._drop_copies = f"DELETE FROM {m} WHERE topic = %s AND grp = %s"
        # (topic, group) -> whether it is the topic's first group (which owns its backlog)
        self._groups: dict[tuple[str, str], bool] = {}
        self._wakeups = _Wakeups()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        # (topic, group) -> until when (monotonic) this process trusts its waiting mark
        self._marked: dict[tuple[str, str], float] = {}
        _forkable.add(self)

    def after_fork(self) -> None:
        _orphans.append(self._listener)
        self._listener, self._listener_lock, self._wakeups = None, threading.Lock(), _Wakeups()

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self._db.execute(self._publish, (
            topic, topic, data, self._jsonb(dict(metadata)), self._db.channel, topic
        ), COUNT)

    def ensure_group(self, topic: str, group: str) -> None:
        if (topic, group) in self._groups:
            return

        def work(cur: Any) -> bool:
            with cur.connection.transaction():
                # One creator per topic at a time, so exactly one group adopts the backlog.
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{self._db.channel}:{topic}",)
                )
                created = cur.execute(self._add_group, (topic, group)).rowcount == 1
                first = bool(cur.execute(self._first_group, (topic,)).fetchone()[0] == group)
                if created and first:
                    cur.execute(self._adopt, (group, topic))
                return first

        self._groups[(topic, group)] = self._db.run(work)

    def _listening(self) -> _Listener:
        listener = self._listener
        if listener is None:
            with self._listener_lock:
                if self._listener is None:
                    wakeups = self._wakeups

                    def deliver(topic: str) -> None:
                        wakeups.bump(topic)

                    def reconnected() -> None:
                        # Anything may have happened meanwhile: mark the groups again, and let
                        # every waiting pull look at its queue.
                        self._marked.clear()
                        wakeups.bump_all()

                    listener = _Listener(self._db, deliver, reconnected)
                    listener.start()
                    self._listener = listener
                listener = self._listener
        return listener

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        self.ensure_group(topic, group)
        deadline = time.monotonic() + timeout
        listener = self._listening() if timeout > 0 else None
        settle = 0.0
        while True:
            seen = self._wakeups.seen(topic) if listener is not None else (0, 0)
            rows = self._db.execute(self._take, (topic, group, max_messages, lease), ALL)
            if rows:
                if len(rows) > 1:
                    rows.sort()  # RETURNING has no order; hand them out oldest first
                return [Delivery(str(i), data, attempt, meta) for i, data, attempt, meta in rows]
            if listener is None:
                return []
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            now = time.monotonic()
            mark = self._marked.get((topic, group), 0.0) <= now
            adopted, due = self._db.execute(self._idle, {
                "topic": topic, "group": group, "first": self._groups[(topic, group)],
                "mark": mark,
            }, ONE)
            if adopted:
                continue
            if mark:
                self._marked[(topic, group)] = now + _MARK_SECONDS / 2
                # A publish that looked for marks just before ours existed sent no NOTIFY: look
                # again now, and once more shortly, by when any such publish has committed.
                settle = _SETTLE
                continue
            wait = remaining if due is None else min(remaining, max(due, 0.001))
            if settle:
                wait, settle = min(wait, settle), 0.0
            if not listener.connected.is_set():
                wait = min(wait, 0.5)  # notifications may be lost while LISTEN reconnects
            self._wakeups.wait(topic, seen, wait)

    @staticmethod
    def _ids(ids: Sequence[str]) -> list[int]:
        return [int(i) for i in ids if i.isdigit()]

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        numbers = self._ids(ids)
        if len(numbers) == 1:
            self._db.execute(self._ack_one, (numbers[0],), COUNT)
        elif numbers:
            self._db.execute(self._ack, (numbers,), COUNT)

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        self._db.execute(self._nack, {
            "delay": delay, "ids": self._ids(ids), "channel": self._db.channel, "topic": topic,
        }, ALL)

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        self._db.execute(self._extend, (lease, self._ids(ids)), COUNT)

    def purge(self, topic: str, group: str) -> int:
        return int(self._db.execute(self._purge, (topic, group), COUNT))

    def backlog(self, topic: str, group: str) -> int:
        row = self._db.execute(self._backlog, (topic, group), ONE)
        return 0 if row is None else int(row[0])

    def delete_group(self, topic: str, group: str) -> None:
        self._groups.pop((topic, group), None)
        self._marked.pop((topic, group), None)

        def work(cur: Any) -> None:
            with cur.connection.transaction():
                cur.execute(self._drop_group, (topic, group))
                cur.execute(self._drop_copies, (topic, group))

        self._db.run(work)

    def translate_error(self, exc: Exception) -> CapaError | None:
        return _translate(self, exc)

    def close(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._db.close()


# --- lock --------------------------------------------------------------------------------------


def _lock_ddl(t: Mapping[str, str]) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {t["main"]} (
            resource text PRIMARY KEY,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL
        )"""
    ]


class PostgresLock(_OnDatabase, LockComponent):
    kind = "postgres"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._db = _Database(self, {"main": ("locks", "resource owner expires_at")}, _lock_ddl)
        t = self._db.tables["main"]
        self._take = (
            f"INSERT INTO {t} AS held (resource, owner, expires_at) VALUES (%s, %s, {_EXPIRY}) "
            "ON CONFLICT (resource) DO UPDATE SET owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at WHERE held.expires_at <= now()"
        )
        # Both EXISTS read the snapshot before the delete: (deleted, held by anyone).
        self._release = (
            f"WITH gone AS (DELETE FROM {t} WHERE resource = %(r)s AND owner = %(o)s "
            "AND expires_at > now() RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM gone), "
            f"EXISTS (SELECT 1 FROM {t} WHERE resource = %(r)s AND expires_at > now())"
        )
        self._extend = (
            f"UPDATE {t} SET expires_at = {_EXPIRY} "
            "WHERE resource = %s AND owner = %s AND expires_at > now()"
        )

    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        return bool(self._db.execute(self._take, (resource_id, owner, expiry), COUNT) == 1)

    def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        deleted, held = self._db.execute(self._release, {"r": resource_id, "o": owner}, ONE)
        if deleted:
            return UnlockStatus.SUCCESS
        return UnlockStatus.LOCK_BELONGS_TO_OTHERS if held else UnlockStatus.LOCK_DOES_NOT_EXIST

    def extend(self, resource_id: str, owner: str, expiry: float) -> bool:
        return bool(self._db.execute(self._extend, (expiry, resource_id, owner), COUNT) == 1)

    def translate_error(self, exc: Exception) -> CapaError | None:
        return _translate(self, exc)

    def close(self) -> None:
        self._db.close()


# --- configuration -----------------------------------------------------------------------------


def _configuration_ddl(t: Mapping[str, str]) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {t["main"]} (
            app_id text NOT NULL,
            grp text NOT NULL,
            label text NOT NULL,
            key text NOT NULL,
            content text NOT NULL,
            tags jsonb NOT NULL DEFAULT '{{}}',
            metadata jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (app_id, grp, label, key)
        )"""
    ]


def _change_record(change: ConfigurationChange) -> list[Any]:
    item = change.item
    return [
        item.group, item.label, item.key, item.content, dict(item.tags), dict(item.metadata),
        change.deleted,
    ]


class PostgresConfiguration(_OnDatabase, ConfigurationComponent):
    kind = "postgres"
    features = frozenset({Feature.WRITE, Feature.WATCH})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        db = self._db = _Database(
            self,
            {"main": ("configuration", "app_id grp label key content tags metadata")},
            _configuration_ddl,
        )
        self._jsonb = db.psycopg.types.json.Jsonb
        t = db.tables["main"]
        columns = "key, content, grp, label, tags, metadata"
        self._load_all = (
            f"SELECT {columns} FROM {t} WHERE app_id = %s AND grp = %s AND label = %s "
            "ORDER BY key"
        )
        self._load = (
            f"SELECT {columns} FROM {t} WHERE app_id = %s AND grp = %s AND label = %s "
            "AND key = ANY(%s)"
        )
        self._upsert = (
            f"INSERT INTO {t} (app_id, grp, label, key, content, tags, metadata) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (app_id, grp, label, key) "
            "DO UPDATE SET content = EXCLUDED.content, tags = EXCLUDED.tags, "
            "metadata = EXCLUDED.metadata"
        )
        self._remove = (
            f"DELETE FROM {t} WHERE app_id = %s AND grp = %s AND label = %s AND key = ANY(%s) "
            f"RETURNING {columns}"
        )
        self._watchers: list[tuple[str, ChangeCallback]] = []
        self._watchers_lock = threading.Lock()
        self._listener: _Listener | None = None
        _forkable.add(self)

    def after_fork(self) -> None:
        # No LISTEN thread came along: the next subscription in this process starts one.
        _orphans.append(self._listener)
        self._listener, self._watchers, self._watchers_lock = None, [], threading.Lock()
        self._listeners_lock, self._watches = threading.Lock(), {}

    @staticmethod
    def _item(row: Sequence[Any]) -> ConfigurationItem:
        key, content, group, label, tags, metadata = row
        return ConfigurationItem(key, content, group, label, tags, metadata)

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        if not keys:
            rows = self._db.execute(self._load_all, (app_id, group, label), ALL)
            return [self._item(row) for row in rows]
        rows = self._db.execute(self._load, (app_id, group, label, list(keys)), ALL)
        found = {row[0]: self._item(row) for row in rows}
        return [found[k] for k in dict.fromkeys(keys) if k in found]

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        if not items:
            return
        jsonb = self._jsonb
        params = [
            (app_id, i.group, i.label, i.key, i.content, jsonb(dict(i.tags)),
             jsonb(dict(i.metadata)))
            for i in items
        ]
        changes = [ConfigurationChange(item) for item in items]

        def work(cur: Any) -> None:
            with cur.connection.transaction():
                cur.executemany(self._upsert, params)
                self._notify(cur, app_id, changes)

        self._db.run(work)

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        if not keys:
            return

        def work(cur: Any) -> None:
            with cur.connection.transaction():
                rows = cur.execute(self._remove, (app_id, group, label, list(keys))).fetchall()
                self._notify(cur, app_id, [ConfigurationChange(self._item(r), True) for r in rows])

        self._db.run(work)

    def _notify(self, cur: Any, app_id: str, changes: list[ConfigurationChange]) -> None:
        """Send the changes with NOTIFY inside the writing transaction: delivered on commit."""
        for payload in _payloads(app_id, changes):
            cur.execute("SELECT pg_notify(%s, %s)", (self._db.channel, payload))

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        entry = (app_id, callback)
        with self._watchers_lock:
            if self._listener is None:
                self._db.run(lambda cur: None)  # creates the table before anyone listens
                listener = _Listener(self._db, self._received)
                listener.start()
                self._listener = listener
            self._watchers.append(entry)

        def stop() -> None:
            with self._watchers_lock:
                if entry in self._watchers:
                    self._watchers.remove(entry)

        return stop

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            app_id = message["a"]
            with self._watchers_lock:
                callbacks = [cb for a, cb in self._watchers if a == app_id]
            if not callbacks:
                return
            changes = [self._change(app_id, record) for record in message["c"]]
        except Exception:
            log.exception("%s: unreadable configuration notification %r", self.name, payload[:200])
            return
        for callback in callbacks:
            try:
                callback(changes)
            except Exception:  # one failing watcher must not silence the others
                log.exception("%s: configuration watcher %r failed", self.name, callback)

    def _change(self, app_id: str, record: list[Any]) -> ConfigurationChange:
        if len(record) == 4:  # too big to travel in the notification: read it back
            group, label, key, deleted = record
            found = [] if deleted else self.load(app_id, group, label, [key])
            item = found[0] if found else ConfigurationItem(key, "", group, label)
            return ConfigurationChange(item, bool(deleted))
        group, label, key, content, tags, metadata, deleted = record
        return ConfigurationChange(
            ConfigurationItem(key, content, group, label, tags, metadata), bool(deleted)
        )

    def translate_error(self, exc: Exception) -> CapaError | None:
        return _translate(self, exc)

    def close(self) -> None:
        super().close()
        with self._watchers_lock:
            listener, self._listener = self._listener, None
            self._watchers.clear()
        if listener is not None:
            listener.stop()
        self._db.close()


def _payloads(app_id: str, changes: Iterable[ConfigurationChange]) -> list[str]:
    """NOTIFY payloads of under 8000 bytes carrying ``changes``; huge items go by reference."""
    payloads: list[str] = []
    batch: list[str] = []
    size = 0
    head = json.dumps(app_id)
    for change in changes:
        record = json.dumps(_change_record(change), separators=(",", ":"))
        if len(record.encode()) + len(head) + 16 > _NOTIFY_LIMIT:
            item = change.item
            record = json.dumps([item.group, item.label, item.key, change.deleted])
        if batch and size + len(record.encode()) + len(head) + 16 > _NOTIFY_LIMIT:
            payloads.append(_payload(head, batch))
            batch, size = [], 0
        batch.append(record)
        size += len(record.encode()) + 1
    if batch:
        payloads.append(_payload(head, batch))
    return payloads


def _payload(head: str, records: list[str]) -> str:
    return '{"a":' + head + ',"c":[' + ",".join(records) + "]}"
