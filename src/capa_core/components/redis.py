"""Redis components (redis-py): state, pub/sub on Streams, lock and configuration.

URL form ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
``unix:///path/redis.sock?db=N``; or Dapr metadata: ``redisHost`` ("host:port"),
``redisPassword``, ``redisUsername``, ``redisDB``, ``enableTLS``. Other settings: ``keyPrefix``
(put before every key and stream this component touches), ``maxRetries`` and
``maxRetryBackoff`` (reconnection), ``dialTimeout``, ``readTimeout``, ``poolSize``, and for
pub/sub ``maxLenApprox`` (cap each stream at about this many entries; 0 = no cap).

Storage, chosen so the common calls are one plain command:
- state: a string per key holding a small header (marker, 16-character ETag, expiry in epoch ms)
  and the value, so get is one GET and an unconditional save one SET (PX for a TTL). Conditional
  writes, deletes and transactions run as Lua scripts (EVALSHA), which Redis runs atomically.
- pub/sub: a stream per topic and a consumer group per capa group. Leases and nack delays are
  per delivery, kept in a sorted set per (topic, group) of entry id -> when it may be handed out
  again, on the server's clock. Pulls run one script that re-claims due entries (XCLAIM, which
  counts the attempt) and reads new ones (XREADGROUP); a puller with nothing to do blocks in
  XREAD on the stream and a small wake-up stream that nack writes to. Acknowledged entries are
  trimmed (XTRIM MINID) once every group is past them.
- lock: SET NX PX; unlock and extend are owner-checked scripts.
- configuration: a hash per (app id, group, label) and a set indexing them per app; every change
  is published on a channel per app, which a watcher thread turns into callbacks (it reconnects,
  then reports what changed while it was away).

Keys, after ``keyPrefix``: state keys as the client finishes them (Dapr's ``app||key``); the
stream ``<topic>`` with ``<topic>:capa:due:<group>`` and ``<topic>:capa:wake`` beside it;
``capa:lock:<resource>``; ``capa:config:...``, ``capa:config-index:<app>`` and the channel
``capa:config-changes:<app>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import CapaError, ETagMismatch, SettingsError, StateError
from ..spi import (
    ChangeCallback,
    Component,
    ConfigurationComponent,
    LockComponent,
    PubSubComponent,
    StateComponent,
    duration,
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

log = logging.getLogger("capa_core.components.redis")

_URL_QUERY = {
    "db", "socket_timeout", "socket_connect_timeout", "health_check_interval",
    "max_connections", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "client_name",
}
def _natural(raw: Any) -> int:
    value = int(raw)
    if value < 0 or isinstance(raw, bool):
        raise ValueError(raw)
    return value


_natural.__name__ = "non-negative integer"


def _missing_driver(source: str) -> SettingsError:
    return SettingsError(
        source, "type", "the Redis components need the redis package",
        "pip install 'capa-python[redis]'",
    )


def connection_options(component: Component) -> dict[str, Any]:
    """Keyword arguments of redis.Redis for a component's metadata; raises SettingsError.

    No network I/O: the client made from them connects on first use.
    """
    src = component.source
    url = component.option("url", str, "", "connectionString")
    host = component.option("redisHost", str, "", "host")
    if url and host:
        raise SettingsError(src, "redisHost", "is set together with url", "keep one of the two")
    options: dict[str, Any]
    if url:
        options = _url_options(src, url)
    elif host:
        options = {"host": host, "port": 6379}
        if host.startswith("["):  # [::1]:6379
            addr, _, rest = host[1:].partition("]")
            options["host"] = addr
            port = rest.removeprefix(":")
        elif host.count(":") == 1:
            options["host"], port = host.split(":")
        else:
            port = ""
        if port:
            options["port"] = _port(src, "redisHost", port)
        if not options["host"]:
            raise SettingsError(src, "redisHost", f"{host!r} has no host", 'write "host:6379"')
    else:
        raise SettingsError(
            src, "url", "no Redis server is named",
            'set url = "redis://127.0.0.1:6379/0" (or Dapr\'s redisHost = "127.0.0.1:6379")',
        )
    db = component.option("redisDB", _natural, -1, "db")
    if db >= 0:
        options["db"] = db
    password = component.option("redisPassword", str, "", "password")
    if password:
        options["password"] = password
    username = component.option("redisUsername", str, "", "username")
    if username:
        options["username"] = username
    if component.option("enableTLS", bool, False, "tls"):
        if "unix_socket_path" in options:
            raise SettingsError(src, "enableTLS", "TLS over a unix socket", "drop enableTLS")
        options["ssl"] = True
    redis_type = component.option("redisType", str, "node").lower()
    if redis_type != "node" or component.option("failover", bool, False):
        raise SettingsError(
            src, "redisType", "only a single Redis node (or a proxy in front of a cluster) is "
            "supported", 'use redisType = "node" and failover = false',
        )
    options["socket_connect_timeout"] = component.option(
        "dialTimeout", duration, options.get("socket_connect_timeout", 5.0)
    )
    options["socket_timeout"] = component.option(
        "readTimeout", duration, options.get("socket_timeout", 10.0)
    )
    pool_size = component.option("poolSize", _natural, 0, "maxConnections")
    if pool_size:
        options["max_connections"] = pool_size
    options["retries"] = component.option("maxRetries", _natural, 3)
    options["retry_cap"] = component.option("maxRetryBackoff", duration, 1.0)
    return options


def _port(source: str, key: str, raw: str) -> int:
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(
            source, key, f"port {raw!r} is not a number from 1 to 65535", "write host:6379"
        ) from None
    return port


def _url_options(source: str, url: str) -> dict[str, Any]:
    example = "redis://[:password@]host:6379/0, rediss://... or unix:///path?db=0"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise SettingsError(source, "url", f"{url!r}: {exc}", f"write {example}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            source, "url", f"{scheme!r} is not a Redis URL scheme", f"write {example}"
        )
    query = {p.partition("=")[0] for p in parts.query.split("&") if p}
    unknown = sorted(query - _URL_QUERY)
    if unknown:
        raise SettingsError(
            source, "url", f"unknown query parameter {unknown[0]!r}",
            f"use only {', '.join(sorted(_URL_QUERY))}",
        )
    try:
        from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
    except ImportError:
        raise _missing_driver(source) from None
    try:
        parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise SettingsError(source, "url", f"{url!r}: {exc}", f"write {example}") from None
    if scheme == "unix":
        if not parts.path:
            raise SettingsError(source, "url", f"{url!r} names no socket", f"write {example}")
    else:
        if not parts.hostname:
            raise SettingsError(source, "url", f"{url!r} names no host", f"write {example}")
        path = parts.path.strip("/")
        if path and "db" not in query and not path.isdigit():
            raise SettingsError(
                source, "url", f"database {path!r} is not a number", f"write {example}"
            )
        if port is None:
            parsed["port"] = 6379
    connection_class = parsed.pop("connection_class", None)
    if connection_class is SSLConnection:
        parsed["ssl"] = True
    elif connection_class is UnixDomainSocketConnection:
        parsed["unix_socket_path"] = parsed.pop("path")
    return parsed


class _Script:
    """A Lua script known by its SHA1; loaded into the server once (again after a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _RedisComponent(Component):
    """Connection handling shared by the Redis components: one pool, scripts, error mapping."""

    kind = "redis"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.options = connection_options(self)
        self.key_prefix = self.option("keyPrefix", str, "")
        try:
            from redis import exceptions
        except ImportError:
            raise _missing_driver(self.source) from None
        # Declared here, not in the class body, so importing capa_core never imports redis.
        type(self).transient_errors = (exceptions.ConnectionError, exceptions.TimeoutError)
        self._exceptions = exceptions
        self._client = self.make_client()
        self._execute: Callable[..., Any] = self._client.execute_command

    def make_client(self, retries: int | None = None) -> Any:
        """A client with its own connection pool; no connection is opened until first use."""
        from redis import Redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        options = dict(self.options)
        count = options.pop("retries")
        cap = options.pop("retry_cap")
        retry = Retry(ExponentialBackoff(cap=cap, base=0.05), count if retries is None else retries)
        return Redis(**options, retry=retry)

    def ping(self) -> None:
        self._client.ping()

    def _eval(self, script: _Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._exceptions.NoScriptError:
            # First use, or the server restarted and forgot its scripts.
            self._execute("SCRIPT", "LOAD", script.source)
            return self._execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def translate_error(self, exc: Exception) -> CapaError | None:
        errors = self._exceptions
        message = str(exc)
        refused = errors.AuthenticationError | errors.AuthenticationWrongNumberOfArgsError
        if isinstance(exc, refused) or "WRONGPASS" in message or "NOAUTH" in message:
            return CapaError(
                f"{self.source}: Redis refused the credentials ({message}); check the password "
                "in the url or redisPassword (and redisUsername)"
            )
        if isinstance(exc, errors.ResponseError) and message.startswith("WRONGTYPE"):
            return StateError(
                f"{self.source}: a key this component uses holds another kind of Redis value "
                f"({message}); give the component its own keyPrefix or database"
            )
        return None

    def close(self) -> None:
        super().close()
        self._client.close()
        self._client.connection_pool.disconnect()


def _escape_glob(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# --- state -------------------------------------------------------------------------------------

_MARK = 0xCA  # first byte of every value this component writes
_HEADER_END = b"\n"

# KEYS[1] key; ARGV: etag ('' none), first_write ('1'/'0'), stored value, px ('' none).
# Returns 1 when written, 0 on an ETag mismatch, -1 when first-write found the key.
_SET = _Script("""
local cur = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' then
  if not cur or string.sub(cur, 2, 17) ~= ARGV[1] then return 0 end
elseif ARGV[2] == '1' and cur then
  return -1
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
""")

# KEYS[1] key; ARGV[1] etag. Returns 1 when deleted, 0 on a mismatch (or a missing key).
_DELETE = _Script("""
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 2, 17) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
""")

# KEYS: one per operation. ARGV, five per operation: kind ('s' set, 'd' delete), etag,
# first_write, stored value, px. Checks every operation against the state the earlier ones
# leave, then applies them all; returns 0, or {index, code} of the first failing one.
_TRANSACT = _Script("""
local staged = {}
for i = 1, #KEYS do
  local k, b = KEYS[i], (i - 1) * 5
  local cur = staged[k]
  if cur == nil then cur = redis.call('GET', k) end
  if ARGV[b + 2] ~= '' then
    if not cur or string.sub(cur, 2, 17) ~= ARGV[b + 2] then return {i, 0} end
  elseif ARGV[b + 1] == 's' and ARGV[b + 3] == '1' and cur then
    return {i, -1}
  end
  if ARGV[b + 1] == 's' then staged[k] = ARGV[b + 4] else staged[k] = false end
end
for i = 1, #KEYS do
  local b = (i - 1) * 5
  if ARGV[b + 1] == 'd' then
    redis.call('DEL', KEYS[i])
  elseif ARGV[b + 5] ~= '' then
    redis.call('SET', KEYS[i], ARGV[b + 4], 'PX', ARGV[b + 5])
  else
    redis.call('SET', KEYS[i], ARGV[b + 4])
  end
end
return 0
""")


def _new_etag() -> str:
    # 64 random bits; the random module reseeds in a forked child, and is much cheaper than
    # os.urandom. An ETag only has to differ from the ones a key had before.
    return f"{random.getrandbits(64):016x}"


def _stored(value: bytes, etag: str, ttl: float | None) -> tuple[bytes, int]:
    """The string kept in Redis for a value, and the TTL in ms (0: none)."""
    if ttl is None:
        return b"\xca" + etag.encode() + _HEADER_END + value, 0
    px = max(1, round(ttl * 1000))
    expires_ms = int(time.time() * 1000) + px
    return b"\xca" + etag.encode() + str(expires_ms).encode() + _HEADER_END + value, px


class RedisState(_RedisComponent, StateComponent):
    """State in Redis strings: ETags, TTL, transactions and key listing."""

    features = frozenset({Feature.ETAG, Feature.TTL, Feature.TRANSACTIONAL, Feature.KEYS})

    def _decode(self, key: str, raw: bytes) -> StoredValue:
        end = raw.find(_HEADER_END, 17)
        if end < 0 or raw[0] != _MARK:
            raise StateError(
                f"{self.source}: key {key!r} holds a value not written by capa; give the "
                "component its own keyPrefix or database"
            )
        expires = raw[17:end]
        return StoredValue(
            raw[end + 1:], raw[1:17].decode(), int(expires) / 1000 if expires else None
        )

    def get(self, key: str) -> StoredValue | None:
        raw = self._execute("GET", self.key_prefix + key)
        return None if raw is None else self._decode(key, raw)

    def bulk_get(self, keys: Sequence[str]) -> list[StoredValue | None]:
        if not keys:
            return []
        prefix = self.key_prefix
        raws = self._execute("MGET", *[prefix + k for k in keys])
        return [None if r is None else self._decode(k, r) for k, r in zip(keys, raws, strict=True)]

    def set(self, request: SetRequest) -> str:
        key, value, etag, first_write, ttl = request
        new_etag = _new_etag()
        stored, px = _stored(value, new_etag, ttl)
        if etag is None and not first_write:  # the fast path: one plain SET
            if px:
                self._execute("SET", self.key_prefix + key, stored, "PX", px)
            else:
                self._execute("SET", self.key_prefix + key, stored)
            return new_etag
        code = self._eval(
            _SET, [self.key_prefix + key],
            [etag or "", "1" if first_write else "0", stored, px or ""],
        )
        if code != 1:
            raise _mismatch(key, code)
        return new_etag

    def delete(self, request: DeleteRequest) -> None:
        if request.etag is None:
            self._execute("DEL", self.key_prefix + request.key)
        elif self._eval(_DELETE, [self.key_prefix + request.key], [request.etag]) != 1:
            raise ETagMismatch(request.key)

    def bulk_set(self, requests: Sequence[SetRequest]) -> dict[str, Exception]:
        """All writes in one round trip (a pipeline); each entry succeeds or fails alone."""
        if not requests:
            return {}
        commands: list[tuple[Any, ...]] = []
        for key, value, etag, first_write, ttl in requests:
            stored, px = _stored(value, _new_etag(), ttl)
            if etag is None and not first_write:
                commands.append(("SET", self.key_prefix + key, stored, *(("PX", px) if px else ())))
            else:
                commands.append((
                    "EVALSHA", _SET.sha, 1, self.key_prefix + key,
                    etag or "", "1" if first_write else "0", stored, px or "",
                ))
        results = self._pipeline(commands)
        no_script = self._exceptions.NoScriptError
        unknown = [i for i, r in enumerate(results) if isinstance(r, no_script)]
        if unknown:  # the script was not loaded yet: those entries did nothing, run them again
            self._execute("SCRIPT", "LOAD", _SET.source)
            again = self._pipeline([commands[i] for i in unknown])
            for i, result in zip(unknown, again, strict=True):
                results[i] = result
        failures: dict[str, Exception] = {}
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, Exception):
                failures[request.key] = self.translate_error(result) or result
            elif isinstance(result, int) and not isinstance(result, bool) and result != 1:
                failures[request.key] = _mismatch(request.key, result)
        return failures

    def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    def transact(self, operations: Sequence[SetRequest | DeleteRequest]) -> None:
        if not operations:
            return
        keys: list[str] = []
        args: list[Any] = []
        for op in operations:
            keys.append(self.key_prefix + op.key)
            if isinstance(op, SetRequest):
                stored, px = _stored(op.value, _new_etag(), op.ttl)
                args += ["s", op.etag or "", "1" if op.first_write else "0", stored, px or ""]
            else:
                args += ["d", op.etag or "", "0", "", ""]
        result = self._eval(_TRANSACT, keys, args)
        if result != 0:
            index, code = result
            raise _mismatch(operations[index - 1].key, code)

    def keys(self, prefix: str) -> list[str]:
        cut = len(self.key_prefix)
        pattern = _escape_glob(self.key_prefix + prefix) + "*"
        return sorted(
            k.decode()[cut:]
            for k in self._client.scan_iter(match=pattern, count=1000, _type="STRING")
        )

    def delete_prefix(self, prefix: str) -> int:
        pattern = _escape_glob(self.key_prefix + prefix) + "*"
        removed = 0
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=pattern, count=1000, _type="STRING"):
            batch.append(key)
            if len(batch) == 500:
                removed += self._execute("UNLINK", *batch)
                batch = []
        if batch:
            removed += self._execute("UNLINK", *batch)
        return removed


def _mismatch(key: str, code: int) -> ETagMismatch:
    if code == -1:
        return ETagMismatch(key, "first-write: the key exists and no etag was given")
    return ETagMismatch(key)


# --- pub/sub -----------------------------------------------------------------------------------

# The server's clock in ms, so every process judges leases by the same clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nowstr = string.format('%.0f', now)
"""

# KEYS[1] stream; ARGV[1] group, ARGV[2] '1' when a group we had made is gone (restart).
# The first group of a stream reads it from the start (the messages waiting for a group); later
# groups get what is published from now on. Returns 1 when created.
_ENSURE_GROUP = _Script("""
local start = '0'
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
  for _, g in ipairs(groups) do
    if g[2] == ARGV[1] then return 0 end
  end
  if #groups > 0 then start = '$' end
end
local ok = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
if ok then return 1 end
return 0
""")

# KEYS[1] stream, KEYS[2] due set, KEYS[3] wake stream.
# ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] lease ms.
# Returns {1, {{id, fields, attempt}...}}, or {0, stream top id, wake top id, ms to next due}.
# Acks leave their due entries behind (an ack is then one XACK); this script drops them when
# they come due and are no longer pending.
_PULL = _Script(_NOW + """
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local until_ = string.format('%.0f', now + tonumber(ARGV[4]))
local out = {}
local due = redis.call('ZRANGE', KEYS[2], '-inf', nowstr, 'BYSCORE', 'LIMIT', 0, count + 32)
local claim, attempts = {KEYS[1], group, consumer, 0}, {}
for _, id in ipairs(due) do
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if not p[1] then
    redis.call('ZREM', KEYS[2], id)
  elseif #claim - 4 < count then
    claim[#claim + 1] = id
    attempts[id] = p[1][4] + 1
  end
end
if #claim > 4 then
  for _, entry in ipairs(redis.call('XCLAIM', unpack(claim))) do
    redis.call('ZADD', KEYS[2], until_, entry[1])
    out[#out + 1] = {entry[1], entry[2], attempts[entry[1]]}
    attempts[entry[1]] = nil
  end
  -- Left over: entries trimmed from the stream (XCLAIM dropped them from the pending list).
  for id in pairs(attempts) do redis.call('ZREM', KEYS[2], id) end
end
if #out < count then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out,
                           'STREAMS', KEYS[1], '>')
  if fresh then
    local leases = {}
    for _, entry in ipairs(fresh[1][2]) do
      leases[#leases + 1] = until_
      leases[#leases + 1] = entry[1]
      out[#out + 1] = {entry[1], entry[2], 1}
    end
    redis.call('ZADD', KEYS[2], unpack(leases))
  end
end
if #out > 0 then return {1, out} end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local wake = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = tonumber(nxt[2]) - now end
return {0, top[1] and top[1][1] or '0-0', wake[1] and wake[1][1] or '0-0', wait}
""")

# KEYS[1] stream, KEYS[2] due set, KEYS[3] wake stream; ARGV[1] group, ARGV[2] delay ms,
# ARGV[3..] ids. The entries pass to a parking consumer (not counted as a delivery) so a lease
# renewal racing with the nack cannot take them back, and are due again after the delay.
_NACK = _Script(_NOW + """
local at = string.format('%.0f', now + tonumber(ARGV[2]))
local claim = {KEYS[1], ARGV[1], 'capa-retry', 0}
for i = 3, #ARGV do claim[#claim + 1] = ARGV[i] end
claim[#claim + 1] = 'JUSTID'
redis.call('XCLAIM', unpack(claim))
local changed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  changed = changed + redis.call('ZADD', KEYS[2], 'XX', 'CH', at, id)
end
if changed > 0 then redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 'n', '1') end
return changed
""")

# KEYS[1] stream, KEYS[2] due set; ARGV[1] group, ARGV[2] consumer, ARGV[3] lease ms,
# ARGV[4..] ids. Renews only what this consumer still holds: not what it nacked, nor what
# another consumer took over after the lease ran out.
_EXTEND_LEASE = _Script(_NOW + """
local at = string.format('%.0f', now + tonumber(ARGV[3]))
local renewed = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    renewed = renewed + redis.call('ZADD', KEYS[2], 'XX', 'CH', at, ARGV[i])
  end
end
return renewed
""")

# KEYS[1] stream. Drops the entries every group has acknowledged: those before the oldest
# pending entry and before every group's read position. Nothing goes while no group exists.
# Also forgets consumers idle for a minute holding nothing (dead processes leave them behind;
# a live one is made again by its next read).
_TRIM = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local best_ms, best_seq
for _, g in ipairs(groups) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local ms, seq
  local pending = redis.call('XPENDING', KEYS[1], name)
  if pending[1] > 0 then
    ms, seq = parse(pending[2])
  else
    ms, seq = parse(last)
    seq = seq + 1
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], name)) do
    local fields = {}
    for i = 1, #c, 2 do fields[c[i]] = c[i + 1] end
    if fields['pending'] == 0 and fields['idle'] > 60000 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], name, fields['name'])
    end
  end
  if best_ms == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%.0f-%.0f', best_ms, best_seq))
""")

# KEYS[1] stream; ARGV[1] group. Skips the group past everything not yet handed out.
_PURGE = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then
    local waiting = #redis.call('XRANGE', KEYS[1], '(' .. last, '+')
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], '$')
    return waiting
  end
end
return 0
""")

# KEYS[1] stream; ARGV[1] group. The entries past the group's last delivered one: the group's
# lag, or, where the server cannot tell it (entries were deleted from the stream), counted.
_BACKLOG = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last, lag
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
    if g[i] == 'lag' then lag = g[i + 1] end
  end
  if name == ARGV[1] then
    if type(lag) == 'number' then return lag end
    return #redis.call('XRANGE', KEYS[1], '(' .. last, '+')
  end
end
return 0
""")

# KEYS[1] stream, KEYS[2] the group's due set; ARGV[1] group.
_DELETE_GROUP = _Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then
  pcall(redis.call, 'XGROUP', 'DESTROY', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
return 1
""")

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer. Forget a consumer holding nothing.
_FORGET_CONSUMER = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
for _, c in ipairs(consumers) do
  if c[2] == ARGV[2] and c[4] == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  end
end
return 0
""")

_TRIM_INTERVAL = 1.0  # seconds between trims of one stream by one process
_MAX_BLOCK = 2.0  # seconds one XREAD may block before the puller looks again
_MAX_PULL = 1000  # deliveries one pull hands out at most


class RedisPubSub(_RedisComponent, PubSubComponent):
    """Pub/sub on Redis Streams with consumer groups; leases and retries per delivery."""

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.max_len = self.option("maxLenApprox", _natural, 0, "maxLen")
        self._groups: set[tuple[str, str]] = set()
        self._consumer_name = ""
        self._consumer_pid = -1
        self._last_trim: dict[str, float] = {}
        self._used: set[tuple[str, str]] = set()
        # A blocked XREAD must return before the socket read times out.
        timeout = self.options.get("socket_timeout") or _MAX_BLOCK * 2
        self._max_block = min(_MAX_BLOCK, timeout / 2)

    # Keys: the stream is named after the topic (as Dapr does); its helpers sit beside it.
    def _stream(self, topic: str) -> str:
        return self.key_prefix + topic

    def _due(self, topic: str, group: str) -> str:
        return f"{self.key_prefix}{topic}:capa:due:{group}"

    def _wake(self, topic: str) -> str:
        return f"{self.key_prefix}{topic}:capa:wake"

    @property
    def consumer(self) -> str:
        """This process's consumer name: unique per process, new after a fork."""
        pid = os.getpid()
        if pid != self._consumer_pid:
            self._consumer_pid = pid
            self._consumer_name = f"{socket.gethostname()}-{pid}-{uuid.uuid4().hex[:8]}"
        return self._consumer_name

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self._execute(*self._xadd(topic, data, metadata))

    def _xadd(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> list[Any]:
        command: list[Any] = ["XADD", self.key_prefix + topic]
        if self.max_len:
            command += ["MAXLEN", "~", self.max_len]
        command += ["*", "data", data]
        if metadata:
            command += ["metadata", json.dumps(metadata, separators=(",", ":"))]
        return command

    def bulk_publish(
        self, topic: str, entries: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> dict[str, Exception]:
        """Every entry in one round trip (a pipeline)."""
        if not entries:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for _, data, metadata in entries:
            pipe.execute_command(*self._xadd(topic, data, metadata))
        results = pipe.execute(raise_on_error=False)
        return {
            entry[0]: self.translate_error(result) or result
            for entry, result in zip(entries, results, strict=True)
            if isinstance(result, Exception)
        }

    def ensure_group(self, topic: str, group: str) -> None:
        if (topic, group) not in self._groups:
            self._eval(_ENSURE_GROUP, [self._stream(topic)], [group, "0"])
            self._groups.add((topic, group))

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        if max_messages < 1:
            return []
        self.ensure_group(topic, group)
        self._used.add((topic, group))
        stream, wake = self._stream(topic), self._wake(topic)
        keys = [stream, self._due(topic, group), wake]
        # Lua's unpack() has a stack limit; a pull may return fewer than asked for.
        count = min(max_messages, _MAX_PULL)
        args = [group, self.consumer, count, max(1, round(lease * 1000))]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._pull_once(topic, group, keys, args)
            if reply[0] == 1:
                return [self._delivery(entry) for entry in reply[1]]
            self._trim(topic)  # idle: a good moment to drop what every group is done with
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Nothing to hand out: wait for a new message, a nack, or the next lease to end.
            wait = min(remaining, self._max_block)
            if reply[3] >= 0:
                wait = min(wait, reply[3] / 1000)
            self._execute(
                "XREAD", "BLOCK", max(1, round(wait * 1000)), "STREAMS", stream, wake,
                reply[1], reply[2],
            )

    def _pull_once(self, topic: str, group: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self._eval(_PULL, keys, args)
        except self._exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        # The group vanished (a server restart without persistence): make it again, from the
        # start of the stream, so messages published since the restart are not skipped.
        log.warning("group %r of topic %r is gone from Redis; recreating it", group, topic)
        self._eval(_ENSURE_GROUP, [keys[0]], [group, "1"])
        return self._eval(_PULL, keys, args)

    @staticmethod
    def _delivery(entry: list[Any]) -> Delivery:
        entry_id, fields, attempt = entry
        data = b""
        metadata: dict[str, str] = {}
        for i in range(0, len(fields), 2):
            name = fields[i]
            if name == b"data":
                data = fields[i + 1]
            elif name == b"metadata":
                metadata = json.loads(fields[i + 1])
        return Delivery(entry_id.decode(), data, attempt, metadata)

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._execute("XACK", self._stream(topic), group, *ids)
        self._trim(topic)

    def _trim(self, topic: str) -> None:
        """Drop the entries every group has acknowledged; at most once a second per topic."""
        now = time.monotonic()
        if now - self._last_trim.get(topic, 0.0) >= _TRIM_INTERVAL:
            self._last_trim[topic] = now
            self._eval(_TRIM, [self._stream(topic)], [])

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        if ids:
            self._on_pending(
                _NACK, [self._stream(topic), self._due(topic, group), self._wake(topic)],
                [group, max(0, round(delay * 1000)), *ids],
            )

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        if ids:
            self._on_pending(
                _EXTEND_LEASE, [self._stream(topic), self._due(topic, group)],
                [group, self.consumer, max(1, round(lease * 1000)), *ids],
            )

    def _on_pending(self, script: _Script, keys: list[str], args: list[Any]) -> None:
        try:
            self._eval(script, keys, args)
        except self._exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The group went with the server's memory (a restart without persistence), and
            # with it the deliveries: there is nothing left to renew or retry.
            log.warning("group %r of %r is gone from Redis; %s had no effect", args[0], keys[0],
                        "nack" if script is _NACK else "extend")

    def purge(self, topic: str, group: str) -> int:
        return int(self._eval(_PURGE, [self._stream(topic)], [group]))

    def backlog(self, topic: str, group: str) -> int:
        return int(self._eval(_BACKLOG, [self._stream(topic)], [group]))

    def delete_group(self, topic: str, group: str) -> None:
        self._groups.discard((topic, group))
        self._used.discard((topic, group))
        self._eval(_DELETE_GROUP, [self._stream(topic), self._due(topic, group)], [group])

    def close(self) -> None:
        # Leave no empty consumer behind in the groups this process pulled from.
        if self._consumer_pid == os.getpid():
            for topic, group in self._used:
                try:
                    self._eval(_FORGET_CONSUMER, [self._stream(topic)], [group, self.consumer])
                except Exception:  # closing must not fail because the server is away
                    log.debug("could not remove consumer from %s/%s", topic, group)
        super().close()


# --- lock --------------------------------------------------------------------------------------

# KEYS[1] lock; ARGV[1] owner. 2 released, 1 held by another owner, 0 not held.
_UNLOCK = _Script("""
local holder = redis.call('GET', KEYS[1])
if not holder then return 0 end
if holder ~= ARGV[1] then return 1 end
redis.call('DEL', KEYS[1])
return 2
""")

# KEYS[1] lock; ARGV[1] owner, ARGV[2] ms.
_EXTEND = _Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""")

_UNLOCK_STATUS = {
    0: UnlockStatus.LOCK_DOES_NOT_EXIST,
    1: UnlockStatus.LOCK_BELONGS_TO_OTHERS,
    2: UnlockStatus.SUCCESS,
}


class RedisLock(_RedisComponent, LockComponent):
    """Leased locks: a key holding the owner, expiring with the lease."""

    def _key(self, resource_id: str) -> str:
        return f"{self.key_prefix}capa:lock:{resource_id}"

    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        ms = max(1, round(expiry * 1000))
        return bool(self._execute("SET", self._key(resource_id), owner, "NX", "PX", ms))

    def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        return _UNLOCK_STATUS[int(self._eval(_UNLOCK, [self._key(resource_id)], [owner]))]

    def extend(self, resource_id: str, owner: str, expiry: float) -> bool:
        ms = max(1, round(expiry * 1000))
        return bool(self._eval(_EXTEND, [self._key(resource_id)], [owner, ms]))


# --- configuration -----------------------------------------------------------------------------

# KEYS[1] hash, KEYS[2] index set; ARGV[1] channel, ARGV[2] index member, ARGV[3] group,
# ARGV[4] label, ARGV[5..] item keys. Removes the items and announces the ones that existed.
_CONFIG_REMOVE = _Script("""
local gone = {}
for i = 5, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    redis.call('HDEL', KEYS[1], ARGV[i])
    gone[#gone + 1] = ARGV[i]
    gone[#gone + 1] = old
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
if #gone > 0 then
  redis.call('PUBLISH', ARGV[1],
    cjson.encode({group = ARGV[3], label = ARGV[4], deleted = true, items = gone}))
end
return #gone / 2
""")


def _quote(part: str) -> str:
    """Keep ':' out of a key part so (app, group, label) map to keys one to one."""
    return part.replace("%", "%25").replace(":", "%3A")


def _unquote(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


_Snapshot = dict[tuple[str, str, str], ConfigurationItem]


class RedisConfiguration(_RedisComponent, ConfigurationComponent):
    """Configuration items in hashes; changes pushed over a Redis channel per app."""

    features = frozenset({Feature.WRITE, Feature.WATCH})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._watchers: list[_ConfigurationWatcher] = []

    def _hash(self, app_id: str, member: str) -> str:
        return f"{self.key_prefix}capa:config:{_quote(app_id)}:{member}"

    def _index(self, app_id: str) -> str:
        return f"{self.key_prefix}capa:config-index:{_quote(app_id)}"

    def channel(self, app_id: str) -> str:
        return f"{self.key_prefix}capa:config-changes:{_quote(app_id)}"

    @staticmethod
    def _member(group: str, label: str) -> str:
        return f"{_quote(group)}:{_quote(label)}"

    @staticmethod
    def _encode(item: ConfigurationItem) -> str:
        body: dict[str, Any] = {"content": item.content}
        if item.tags:
            body["tags"] = dict(item.tags)
        if item.metadata:
            body["metadata"] = dict(item.metadata)
        return json.dumps(body, separators=(",", ":"))

    @staticmethod
    def _item(key: str | bytes, raw: str | bytes, group: str, label: str) -> ConfigurationItem:
        body = json.loads(raw)
        return ConfigurationItem(
            key.decode() if isinstance(key, bytes) else key, body["content"], group, label,
            body.get("tags", {}), body.get("metadata", {}),
        )

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        name = self._hash(app_id, self._member(group, label))
        if keys:
            values = self._execute("HMGET", name, *keys)
            return [
                self._item(k, v, group, label) for k, v in zip(keys, values, strict=True)
                if v is not None
            ]
        found = self._client.hgetall(name)
        return [self._item(k, v, group, label) for k, v in found.items()]

    def load_all(self, app_id: str) -> _Snapshot:
        """Every item of an app, by (group, label, key)."""
        members = sorted(m.decode() for m in self._execute("SMEMBERS", self._index(app_id)))
        pipe = self._client.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self._hash(app_id, member))
        snapshot: _Snapshot = {}
        for member, found in zip(members, pipe.execute(), strict=True):
            group, label = (_unquote(p) for p in member.split(":"))
            for key, value in found.items():
                item = self._item(key, value, group, label)
                snapshot[(group, label, item.key)] = item
        return snapshot

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        by_place: dict[tuple[str, str], dict[str, str]] = {}
        for item in items:
            by_place.setdefault((item.group, item.label), {})[item.key] = self._encode(item)
        if not by_place:
            return
        # One MULTI/EXEC: the items are written and announced together.
        pipe = self._client.pipeline(transaction=True)
        for (group, label), fields in by_place.items():
            member = self._member(group, label)
            pipe.hset(self._hash(app_id, member), mapping=fields)
            pipe.sadd(self._index(app_id), member)
            flat = [part for pair in fields.items() for part in pair]
            pipe.publish(
                self.channel(app_id),
                json.dumps({"group": group, "label": label, "deleted": False, "items": flat}),
            )
        pipe.execute()

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        member = self._member(group, label)
        self._eval(
            _CONFIG_REMOVE, [self._hash(app_id, member), self._index(app_id)],
            [self.channel(app_id), member, group, label, *keys],
        )

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        watcher = _ConfigurationWatcher(self, app_id, callback)
        watcher.start()
        self._watchers.append(watcher)

        def stop() -> None:
            watcher.stop()
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return stop

    def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.stop()
        self._watchers.clear()
        super().close()


# Watchers to restart in a forked child (threads do not survive fork()).
_watchers: weakref.WeakSet[_ConfigurationWatcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for watcher in list(_watchers):
        watcher.restart_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _ConfigurationWatcher:
    """A thread listening on an app's change channel; after a reconnect it reports the
    differences between what it knew and what the server holds, so no change is missed."""

    def __init__(
        self, store: RedisConfiguration, app_id: str, callback: ChangeCallback
    ) -> None:
        self.store, self.app_id, self.callback = store, app_id, callback
        self.channel = store.channel(app_id).encode()
        self._stopped = threading.Event()
        self._client = store.make_client(retries=0)  # reconnection is this thread's job
        self._pubsub: Any = None
        self._known: _Snapshot = {}
        self._thread = self._new_thread()
        _watchers.add(self)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(
            target=self._run, name=f"capa-config-watch-{self.store.name}", daemon=True
        )

    def restart_after_fork(self) -> None:
        """In a forked child: listen again on connections of its own, then report what
        changed since the fork (the resync after any reconnect)."""
        if self._stopped.is_set():
            return
        self._stopped = threading.Event()  # the parent's may have been mid-use at fork()
        self._pubsub = None  # the parent's connection; dropped, never closed from here
        self._client = self.store.make_client(retries=0)
        self._thread = self._new_thread()
        self._thread.start()

    def start(self) -> None:
        # Subscribe before returning, so every change made after watch() returns is seen.
        self._pubsub = self._subscribe()
        self._known = self.store.load_all(self.app_id)
        self._thread.start()

    def _subscribe(self) -> Any:
        pubsub = self._client.pubsub()
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                return pubsub
        pubsub.close()
        raise self.store._exceptions.TimeoutError("no confirmation of SUBSCRIBE")

    def _run(self) -> None:
        backoff = 0.05
        errors = self.store._exceptions
        while not self._stopped.is_set():
            try:
                if self._pubsub is None:
                    self._pubsub = self._subscribe()
                    self._resync()
                    log.info("configuration watcher of %r reconnected", self.app_id)
                backoff = 0.05
                while not self._stopped.is_set():
                    message = self._pubsub.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        self._deliver(self._changes(message["data"]))
            except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
                if self._stopped.is_set():
                    break
                log.warning("configuration watcher of %r lost Redis (%s)", self.app_id, exc)
                self._drop_pubsub()
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # a bad message must not end the watch
                log.exception("configuration watcher of %r failed", self.app_id)
        self._drop_pubsub()

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                log.debug("closing a broken pubsub connection failed", exc_info=True)
            self._pubsub = None

    def _changes(self, payload: bytes) -> list[ConfigurationChange]:
        body = json.loads(payload)
        group, label, deleted, flat = body["group"], body["label"], body["deleted"], body["items"]
        changes = []
        for i in range(0, len(flat), 2):
            item = self.store._item(flat[i], flat[i + 1], group, label)
            if deleted:
                self._known.pop((group, label, item.key), None)
            else:
                self._known[(group, label, item.key)] = item
            changes.append(ConfigurationChange(item, deleted))
        return changes

    def _resync(self) -> None:
        """Report what changed while disconnected: new or changed items, and removed ones."""
        current = self.store.load_all(self.app_id)
        changes = [
            ConfigurationChange(item) for place, item in current.items()
            if self._known.get(place) != item
        ]
        changes += [
            ConfigurationChange(item, True) for place, item in self._known.items()
            if place not in current
        ]
        self._known = current
        self._deliver(changes)

    def _deliver(self, changes: list[ConfigurationChange]) -> None:
        if changes:
            try:
                self.callback(changes)
            except Exception:
                log.exception("configuration callback failed")

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._client.close()
