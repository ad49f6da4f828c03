"""File components: configuration items and secrets kept in a YAML, TOML or JSON file.

URL form ``file:///abs/path/app.yaml`` (``file://rel/app.yaml`` is relative to the working
directory), or the metadata ``path`` (secrets also take Dapr's ``secretsFile``). The format comes
from the suffix (``.yaml``/``.yml``, ``.toml``, ``.json``) or the metadata ``format``.

Configuration (``configuration.file``): reads, writes (WRITE) and pushes changes (WATCH).
The file has one of two forms.

Nested form: any mapping. Nested keys join with dots; every leaf is an item in group "" and
label "". Strings are the content as they are; other values become JSON text (``10``, ``true``,
``[1, 2]``; an empty value is ``""``)::

    db:
      pool: 10           # key "db.pool", content "10"
      host: db.internal  # key "db.host"
    feature.beta: true   # key "feature.beta", content "true"

Explicit form: a list of items, either the whole document (JSON, YAML) or the only top-level
key ``items`` (every format; TOML needs it). Each item has ``key`` and ``content`` (or
``value``), and optionally ``group``, ``label``, ``tags`` and ``metadata``::

    items:
      - key: db.pool
        content: "10"
        group: database
        label: prod
        tags: {owner: platform}

Every app id reading the component sees the same items: the file is one application's settings.
Writes rewrite the whole file atomically (comments and layout are not kept; TOML needs the
``tomli-w`` package) under a lock shared by the processes of the machine. A nested-form file
takes items of group "", label "" and no tags only (an empty one switches to the explicit form).
Changes made through any component of this process on the file are pushed at once, one by one.
Changes by other processes (or editors) reach subscribers within about 100 ms: one thread per
process polls the watched files' size and mtime (and their bytes while the mtime is too recent to
trust), so changes quicker than a poll arrive merged into one. A file
that stops parsing keeps its last good items and the problem is logged; one broken at start-up
fails with a SettingsError naming the file and line.

Secrets (``secrets.file``), like Dapr's ``secretstores.local.file``: a mapping whose nested keys
join with ``nestedSeparator`` (default ``:``). ``get("db:password")`` returns
``{"db:password": "..."}``; ``get("db")`` on a mapping returns that mapping flattened,
``{"password": "...", "user": "..."}``. ``names()`` lists the leaves, or the top-level keys with
``multiValued: true``. The file is read again when it changes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import stat
import sys
import tempfile
import threading
import time
import tomllib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import yaml

from ..errors import SecretNotFound, SettingsError, UnsupportedFeature
from ..spi import ChangeCallback, Component, ConfigurationComponent, SecretsComponent
from ..types import ConfigurationChange, ConfigurationItem, Feature

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("capa_core.components.file")

T = TypeVar("T")

POLL_INTERVAL = 0.025  # seconds; a change is confirmed on two polls, so pushed within ~50 ms
# A file modified this recently may change again without its mtime moving (coarse timestamps),
# so its bytes are compared as well: git's "racy clean" problem.
RACY_SECONDS = 2.0
FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


# --- reading and writing documents ------------------------------------------------------------


def _file_settings(component: Component, *path_keys: str) -> tuple[Path, str]:
    """The absolute path and format a file component's url / path / format metadata name."""
    raw = component.option(path_keys[0], str, "", *path_keys[1:])
    url = component.metadata.get("url")
    if not raw and url:
        parts = urlsplit(str(url))
        if parts.scheme != "file":
            raise SettingsError(
                component.source, "url", f"{url!r} is not a file:// URL",
                'write url = "file:///absolute/path/config.yaml"',
            )
        raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise SettingsError(
            component.source, "path", "no file is named",
            'set url = "file:///etc/app/config.yaml" or path = "config.yaml"',
        )
    path = Path(os.path.abspath(Path(raw).expanduser()))
    fmt = component.option("format", str, FORMATS.get(path.suffix.lower(), "")).lower()
    if fmt == "yml":
        fmt = "yaml"
    if fmt not in FORMATS.values():
        raise SettingsError(
            component.source, "format", f"cannot tell the format of {path.name!r}",
            "name the file .yaml, .toml or .json, or set format = yaml | toml | json",
        )
    return path, fmt


def _parse(data: bytes, fmt: str, source: str) -> Any:
    """The document in ``data``; SettingsError naming the line when it does not parse."""
    line: int | None = None
    try:
        text = data.decode("utf-8")
        if fmt == "json":
            return json.loads(text) if text.strip() else None
        if fmt == "toml":
            return tomllib.loads(text)
        return yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        line, problem = exc.lineno, f"{exc.msg} (column {exc.colno})"
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_POSITION.search(str(exc))
        problem = _TOML_POSITION.sub("", str(exc))
        if found:
            line, problem = int(found[1]), f"{problem} (column {found[2]})"
    except yaml.YAMLError as exc:
        problem = str(exc)
        if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
            line = exc.problem_mark.line + 1
            words = [w for w in (exc.context, exc.problem) if w]
            problem = f"{', '.join(words)} (column {exc.problem_mark.column + 1})"
    where = f"line {line}" if line is not None else "(syntax)"
    raise SettingsError(
        source, where, f"cannot parse as {fmt.upper()}: {problem}",
        f"correct the {fmt.upper()} at {where}" if line else f"write valid {fmt.upper()}",
    )


def _dump(document: Any, fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    if fmt == "yaml":
        text = yaml.safe_dump(
            document, sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        return text.encode()
    try:
        import tomli_w
    except ImportError:
        raise UnsupportedFeature(
            "configuration.file", "writing TOML files",
            "install tomli-w (pip install 'capa-python[toml]') or use YAML or JSON",
        ) from None
    return tomli_w.dumps(document).encode()


def _text(value: Any) -> str:
    """A file value as item content: strings as they are, anything else as JSON text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False, default=str)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "list" if isinstance(value, list) else "text"


def _typed(old: Any, content: str) -> Any:
    """What to write for ``content`` where ``old`` was: keep a number a number, and so on."""
    kind = _kind(old)
    if kind == "text":
        return content
    if kind == "null" and content == "":
        return None
    try:
        new = json.loads(content)
    except ValueError:
        return content
    return new if _kind(new) == kind else content


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new, never half."""
    target = path.resolve()  # keep a symlinked file a symlink
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


@contextmanager
def _write_lock(path: Path) -> Iterator[None]:
    """Exclude writers of the same directory in every process (flock on the directory)."""
    if sys.platform == "win32":  # no flock: writers of one process still exclude each other
        yield
        return
    # Locking the directory rather than a side file leaves nothing behind next to the user's file.
    fd = os.open(path.resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- change detection -----------------------------------------------------------------------


class _TrackedFile(Generic[T]):
    """A file's last good contents, interpreted, and the check that notices it changed."""

    def __init__(self, path: Path, fmt: str, interpret: Callable[[Any, str], T]) -> None:
        self.path, self.format = path, fmt
        self._interpret = interpret
        self._signature = self._stat()  # before reading: a change in between is seen next poll
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SettingsError(
                str(path), "(file)", f"cannot be read: {exc.strerror or exc}",
                "create the file or correct the path",
            ) from None
        self.value: T = self.parse(data)
        self._good = data
        self._pending: bytes | None = None  # changed bytes waiting for a second look
        self._rejected: bytes | None = None  # bytes that did not parse, reported once
        self._unreadable = False

    def parse(self, data: bytes) -> T:
        return self._interpret(_parse(data, self.format, str(self.path)), str(self.path))

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def refresh(self, *, settle: bool) -> T | None:
        """Read the file again if it may have changed; the new value when it did, else None.

        With ``settle`` a change is taken only once two polls read the same bytes, so a writer
        half-way through rewriting the file in place is not mistaken for the new contents.
        """
        signature = self._stat()
        racy = signature is not None and time.time() - signature[0] / 1e9 < RACY_SECONDS
        if signature == self._signature and self._pending is None and not racy:
            return None
        self._signature = signature
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            if not self._unreadable:
                self._unreadable = True
                log.warning("%s cannot be read (%s); keeping its last good values", self.path, exc)
            return None
        self._unreadable = False
        if data == self._good:
            self._pending = None
            return None
        if data == self._rejected:
            return None
        if settle and data != self._pending:
            self._pending = data
            return None
        self._pending = None
        try:
            value = self.parse(data)
        except SettingsError as exc:
            self._rejected = data
            log.error("%s; keeping the last good values until it is fixed", exc)
            return None
        self.accept(data, value)
        return value

    def accept(self, data: bytes, value: T) -> None:
        """Take ``data`` (just written by this process) as the current contents."""
        self._good, self.value, self._rejected = data, value, None
        self._signature = self._stat()


class _Poller:
    """The one thread of the process that polls watched files; it exits when none are left."""

    def __init__(self) -> None:
        self._checks: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, check: Callable[[], None]) -> Callable[[], None]:
        token = id(check)
        with self._lock:
            self._checks[token] = check
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="capa-file-watch", daemon=True
                )
                self._thread.start()

        def remove() -> None:
            with self._lock:
                self._checks.pop(token, None)

        return remove

    def _run(self) -> None:
        while True:
            with self._lock:
                checks = list(self._checks.values())
                if not checks:
                    self._thread = None
                    return
            for check in checks:
                try:
                    check()
                except Exception:  # one bad file or callback must not stop the others
                    log.exception("watching a configuration file failed")
            time.sleep(POLL_INTERVAL)


_poller = _Poller()


# --- configuration --------------------------------------------------------------------------

ItemKey = tuple[str, str, str]  # (group, label, key)
_ITEM_FIELDS = ("key", "content", "value", "group", "label", "tags", "metadata")


def _is_explicit(document: Any) -> bool:
    return isinstance(document, list) or (
        isinstance(document, dict)
        and list(document) == ["items"]
        and isinstance(document["items"], list)
    )


def _leaves(document: Mapping[Any, Any]) -> dict[str, tuple[Any, ...]]:
    """Dotted key -> path of original keys to the leaf, for a nested-form document."""
    out: dict[str, tuple[Any, ...]] = {}

    def walk(node: Mapping[Any, Any], path: tuple[Any, ...]) -> None:
        for key, value in node.items():
            here = (*path, key)
            if isinstance(value, dict):
                walk(value, here)
            else:
                dotted = ".".join(str(k) for k in here)
                if dotted in out:
                    raise ValueError(dotted)
                out[dotted] = here

    walk(document, ())
    return out


def _at(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def _explicit_item(entry: Any, where: str, source: str) -> ConfigurationItem:
    if not isinstance(entry, dict):
        raise SettingsError(source, where, "is not a mapping", "write key: and content: in it")
    unknown = [k for k in entry if k not in _ITEM_FIELDS]
    if unknown:
        raise SettingsError(
            source, f"{where}.{unknown[0]}", "is not an item field",
            f"use {', '.join(_ITEM_FIELDS)}",
        )
    key = entry.get("key")
    if isinstance(key, bool) or not isinstance(key, str | int | float) or key == "":
        raise SettingsError(source, f"{where}.key", "is missing or empty", "give every item a key")
    if "content" in entry and "value" in entry:
        raise SettingsError(
            source, where, "has both content and value", "keep one of them (they mean the same)"
        )
    maps: dict[str, dict[str, str]] = {}
    for name in ("tags", "metadata"):
        raw = entry.get(name) or {}
        if not isinstance(raw, dict):
            raise SettingsError(
                source, f"{where}.{name}", "is not a mapping", f"write {name}: {{name: value}}"
            )
        maps[name] = {str(k): _text(v) for k, v in raw.items()}
    return ConfigurationItem(
        str(key),
        _text(entry.get("content", entry.get("value"))),
        _text(entry.get("group")),
        _text(entry.get("label")),
        maps["tags"],
        maps["metadata"],
    )


def _configuration_items(document: Any, source: str) -> dict[ItemKey, ConfigurationItem]:
    """The items of a configuration file in either form; SettingsError when it is malformed."""
    items: dict[ItemKey, ConfigurationItem] = {}
    if document is None:
        return items
    if _is_explicit(document):
        entries = document if isinstance(document, list) else document["items"]
        prefix = "items" if isinstance(document, dict) else ""
        for index, entry in enumerate(entries):
            where = f"{prefix}[{index}]"
            item = _explicit_item(entry, where, source)
            coordinates = (item.group, item.label, item.key)
            if coordinates in items:
                raise SettingsError(
                    source, where, f"repeats key {item.key!r} of group {item.group!r} and "
                    f"label {item.label!r}", "keep one entry per key, group and label",
                )
            items[coordinates] = item
        return items
    if not isinstance(document, dict):
        raise SettingsError(
            source, "(top level)", f"is a {type(document).__name__}",
            "write a mapping of keys to values, or a list of items (see capa_core.components.file)",
        )
    try:
        leaves = _leaves(document)
    except ValueError as exc:
        raise SettingsError(
            source, str(exc), "is written twice (once nested, once with dots)", "keep one of them"
        ) from None
    for dotted, path in leaves.items():
        items[("", "", dotted)] = ConfigurationItem(dotted, _text(_at(document, path)))
    return items


def _diff(
    old: Mapping[ItemKey, ConfigurationItem], new: Mapping[ItemKey, ConfigurationItem]
) -> list[ConfigurationChange]:
    changes = [ConfigurationChange(item) for k, item in new.items() if old.get(k) != item]
    changes += [ConfigurationChange(item, True) for k, item in old.items() if k not in new]
    return changes


class _ConfigurationFile:
    """One configuration file as every component of this process naming it sees it.

    Sharing it means a write through one component reaches the subscribers of all of them at
    once and in order, where polling alone would merge quick successive changes into one.
    """

    def __init__(self, tracked: _TrackedFile[dict[ItemKey, ConfigurationItem]]) -> None:
        self.tracked = tracked
        self.path = tracked.path
        self.lock = threading.RLock()  # reentrant: a change handler may read the store again
        self._callbacks: list[ChangeCallback] = []
        self._stop_polling: Callable[[], None] | None = None

    def refresh(self, *, settle: bool) -> None:
        with self.lock:
            old = self.tracked.value
            new = self.tracked.refresh(settle=settle)
            if new is not None:
                self._push(_diff(old, new))

    def _push(self, changes: list[ConfigurationChange]) -> None:
        # Called with the lock held, so every subscriber sees changes in file order.
        if changes:
            for callback in list(self._callbacks):
                callback(changes)

    def rewrite(self, edit: Callable[[Any], Any]) -> None:
        """Read the file fresh, apply ``edit`` to its document, write it back, push the changes."""
        source, fmt = str(self.path), self.tracked.format
        with self.lock, _write_lock(self.path):
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                data = b""
            document = _parse(data, fmt, source)
            _configuration_items(document, source)  # refuse to edit a malformed file
            new_document = edit(document)
            new_data = _dump(new_document, fmt)
            new_items = _configuration_items(new_document, source)
            if new_data != data:
                _replace(self.path, new_data)
            old = self.tracked.value
            self.tracked.accept(new_data, new_items)
            self._push(_diff(old, new_items))

    def watch(self, callback: ChangeCallback) -> Callable[[], None]:
        with self.lock:
            self._callbacks.append(callback)
            if self._stop_polling is None:
                self._stop_polling = _poller.add(lambda: self.refresh(settle=True))

        def stop() -> None:
            with self.lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
                if not self._callbacks and self._stop_polling is not None:
                    self._stop_polling()
                    self._stop_polling = None

        return stop


_open_files: weakref.WeakValueDictionary[tuple[Path, str], _ConfigurationFile] = (
    weakref.WeakValueDictionary()
)
_open_files_lock = threading.Lock()


def _configuration_file(path: Path, fmt: str) -> _ConfigurationFile:
    # Parsed here whether or not the file is already open: a broken file fails at start-up.
    tracked = _TrackedFile(path, fmt, _configuration_items)
    with _open_files_lock:
        shared = _open_files.get((path, fmt))
        if shared is None:
            shared = _open_files[(path, fmt)] = _ConfigurationFile(tracked)
        return shared


class FileConfiguration(ConfigurationComponent):
    kind = "file"
    features = frozenset({Feature.WRITE, Feature.WATCH})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._file = _configuration_file(*_file_settings(self, "path"))

    @property
    def path(self) -> Path:
        return self._file.path

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        self._file.refresh(settle=False)
        items = self._file.tracked.value
        if keys:
            found = (items.get((group, label, key)) for key in keys)
            return [item for item in found if item is not None]
        return [item for (g, lb, _), item in items.items() if (g, lb) == (group, label)]

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        def edit(document: Any) -> Any:
            plain = all(not (i.group or i.label or i.tags or i.metadata) for i in items)
            if not _is_explicit(document):
                if plain:
                    return self._store_nested(document or {}, items)
                if _configuration_items(document, str(self.path)):
                    raise UnsupportedFeature(
                        f"{self.name} ({self.type_name})", "groups, labels or tags in a "
                        f"nested-form file ({self.path})",
                        "rewrite the file in the explicit form, items: [{key, content, group, "
                        "label, tags}] (see capa_core.components.file)",
                    )
                document = {"items": []}
            entries = document if isinstance(document, list) else document["items"]
            for item in items:
                self._store_entry(entries, item)
            return document

        self._file.rewrite(edit)

    def _store_nested(self, document: Any, items: Sequence[ConfigurationItem]) -> Any:
        leaves = _leaves(document)
        for item in items:
            path = leaves.get(item.key)
            if path is None:
                parts = item.key.split(".")
                path = (item.key,) if "" in parts else tuple(parts)
                node = document
                for depth, part in enumerate(path[:-1]):
                    child = node.setdefault(part, {})
                    if not isinstance(child, dict):
                        taken = ".".join(path[: depth + 1])
                        raise ValueError(
                            f"cannot store {item.key!r} in {self.path}: {taken!r} holds a value, "
                            "not a table of keys"
                        )
                    node = child
                leaves[item.key] = path
                node[path[-1]] = item.content
            else:
                parent = _at(document, path[:-1])
                parent[path[-1]] = _typed(parent[path[-1]], item.content)
        return document

    @staticmethod
    def _store_entry(entries: list[Any], item: ConfigurationItem) -> None:
        def coordinates(entry: Any) -> ItemKey | None:
            if not isinstance(entry, dict):
                return None
            return (_text(entry.get("group")), _text(entry.get("label")), str(entry.get("key")))

        wanted = (item.group, item.label, item.key)
        for entry in entries:
            if coordinates(entry) == wanted:
                field = "value" if "value" in entry else "content"
                entry[field] = _typed(entry.get(field), item.content)
                for name in ("tags", "metadata"):
                    if getattr(item, name):
                        entry[name] = dict(getattr(item, name))
                    else:
                        entry.pop(name, None)
                return
        entry = {"key": item.key, "content": item.content}
        for name in ("group", "label"):
            if getattr(item, name):
                entry[name] = getattr(item, name)
        for name in ("tags", "metadata"):
            if getattr(item, name):
                entry[name] = dict(getattr(item, name))
        entries.append(entry)

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        doomed = set(keys)

        def edit(document: Any) -> Any:
            if _is_explicit(document):
                entries = document if isinstance(document, list) else document["items"]
                entries[:] = [
                    e for e in entries
                    if not (
                        isinstance(e, dict) and str(e.get("key")) in doomed
                        and _text(e.get("group")) == group and _text(e.get("label")) == label
                    )
                ]
            elif document and not group and not label:
                for key, path in _leaves(document).items():
                    if key in doomed:
                        del _at(document, path[:-1])[path[-1]]
            return document

        self._file.rewrite(edit)

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        return self._file.watch(callback)


# --- secrets ----------------------------------------------------------------------------------


def _flatten(node: Any, separator: str, prefix: str = "") -> dict[str, str]:
    """Leaves of nested mappings and lists as {"a:b:0": "text"}, Dapr's local.file layout."""
    if isinstance(node, dict):
        children: Any = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return {prefix: _text(node)}
    out: dict[str, str] = {}
    for key, value in children:
        out.update(_flatten(value, separator, f"{prefix}{separator}{key}" if prefix else str(key)))
    return out


def _secrets_document(document: Any, source: str) -> dict[str, Any]:
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SettingsError(
            source, "(top level)", f"is a {type(document).__name__}",
            "write a mapping of secret names to values",
        )
    return document


class FileSecrets(SecretsComponent):
    kind = "file"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        path, fmt = _file_settings(self, "secretsFile", "path")
        self.separator = self.option("nestedSeparator", str, ":", "nested_separator")
        if not self.separator:
            raise SettingsError(
                self.source, "nestedSeparator", "is empty", 'use a separator such as ":"'
            )
        self.multi_valued = self.option("multiValued", bool, False, "multi_valued")
        self._file = _TrackedFile(path, fmt, _secrets_document)
        self._lock = threading.Lock()
        self._flat = _flatten(self._file.value, self.separator)

    def _current(self) -> tuple[dict[str, Any], dict[str, str]]:
        with self._lock:
            if self._file.refresh(settle=False) is not None:
                self._flat = _flatten(self._file.value, self.separator)
            return self._file.value, self._flat

    def get(self, name: str) -> dict[str, str]:
        document, flat = self._current()
        if name in flat:
            return {name: flat[name]}
        node: Any = document
        for part in name.split(self.separator):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SecretNotFound(self.name, name)
        if not isinstance(node, dict | list):
            return {name: _text(node)}
        return _flatten(node, self.separator)

    def names(self) -> list[str]:
        document, flat = self._current()
        return sorted(str(k) for k in document) if self.multi_valued else sorted(flat)
