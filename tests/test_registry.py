"""The component registry: aliases, Dapr type names, URL schemes and the capa.components group."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from capa_core import Runtime, SettingsError, UnknownComponentType, registry
from capa_core.registry import (
    ALIASES,
    BLOCKS,
    DAPR_TYPES,
    URL_SCHEMES,
    known_types,
    normalize_type,
    resolve,
    type_for_url,
)
from capa_core.spi import Component


def importable(target: str) -> bool:
    """False only while the alias's module is not written yet (other modules must import)."""
    module = target.partition(":")[0]
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return False
        raise
    return True


@pytest.mark.parametrize("type_name", sorted(ALIASES))
def test_every_alias_names_a_component_of_its_block(type_name: str) -> None:
    if not importable(ALIASES[type_name]):
        pytest.skip(f"{ALIASES[type_name]} is not written yet")
    cls = resolve(type_name)
    assert issubclass(cls, Component)
    block, _, kind = type_name.partition(".")
    assert cls.block == block
    assert cls.kind == kind
    assert block in BLOCKS


@pytest.mark.parametrize("dapr_name", sorted(DAPR_TYPES))
def test_dapr_type_names_resolve_like_ours(dapr_name: str) -> None:
    ours = DAPR_TYPES[dapr_name]
    assert ours in ALIASES
    assert normalize_type(dapr_name) == ours
    if importable(ALIASES[ours]):
        assert resolve(dapr_name) is resolve(ours)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("STATE.Memory", "state.memory"), ("  lock.memory\n", "lock.memory"),
     ("secretstores.local.env", "secrets.env"), ("secretstores.file", "secrets.file"),
     ("secretstores.hashicorp.vault", "secrets.hashicorp.vault"), ("state.redis", "state.redis")],
)
def test_normalize_type(given: str, expected: str) -> None:
    assert normalize_type(given) == expected


@pytest.mark.parametrize("scheme", sorted(URL_SCHEMES))
def test_every_url_scheme_picks_a_kind_per_block(scheme: str) -> None:
    kind = URL_SCHEMES[scheme]
    for block in BLOCKS:
        assert type_for_url(block, f"{scheme}://host/path") == f"{block}.{kind}"
    assert type_for_url("state", f"{scheme.upper()}://x") == f"state.{kind}"
    # Every scheme leads to at least one registered component.
    assert any(t.endswith(f".{kind}") for t in ALIASES)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("redis://127.0.0.1:6379/0", "state.redis"), ("unix:///tmp/redis.sock", "state.redis"),
     ("postgresql://u@h/db", "state.postgres"), ("sqlite:///rel.db", "state.sqlite"),
     ("sqlite:////abs/x.db", "state.sqlite"), ("memory://", "state.memory"),
     ("redis://[::1", "state.redis")],
)
def test_type_for_url_examples(url: str, expected: str) -> None:
    assert type_for_url("state", url) == expected


@pytest.mark.parametrize("url", ["mongodb://h/db", "localhost:6379", "", "://x"])
def test_unknown_url_schemes_list_the_known_ones(url: str) -> None:
    with pytest.raises(UnknownComponentType) as raised:
        type_for_url("state", url)
    assert "redis://" in str(raised.value) and "sqlite://" in str(raised.value)


def test_unknown_types_say_what_exists_and_what_was_meant() -> None:
    with pytest.raises(UnknownComponentType) as raised:
        resolve("pubsub.rabitmq")
    error = raised.value
    assert isinstance(error, LookupError)
    assert error.type_name == "pubsub.rabitmq"
    assert error.known == known_types()
    assert "did you mean 'pubsub.rabbitmq'?" in str(error)
    assert "capa.components" in str(error)
    with pytest.raises(UnknownComponentType) as raised:
        resolve("nothing-like-it")
    assert "did you mean" not in str(raised.value)


def test_known_types_lists_every_alias() -> None:
    assert set(ALIASES) <= set(known_types())
    assert known_types() == sorted(known_types())


# --- the capa.components entry-point group -------------------------------------------------------

PLUGIN = '''\
"""A third-party state component, as a separate distribution would ship it."""
from capa_core.components.memory import MemoryState


class ShinyState(MemoryState):
    kind = "shiny"
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[str]:
    """An installed (on sys.path) distribution declaring a capa.components entry point."""
    module = f"capa_plugin_{unique}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [capa.components]
        state.shiny = {module}:ShinyState
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry._entry_points.cache_clear()
    yield module
    registry._entry_points.cache_clear()


def test_entry_point_components_resolve_and_are_listed(plugin: str) -> None:
    cls = resolve("state.shiny")
    assert cls.__module__ == plugin and cls.__name__ == "ShinyState"
    assert "state.shiny" in known_types()
    with pytest.raises(UnknownComponentType) as raised:
        resolve("state.shinny")
    assert "did you mean 'state.shiny'?" in str(raised.value)


def test_settings_use_entry_point_components(plugin: str, unique: str) -> None:
    document = {"state": {"bright": {"type": "state.shiny", "namespace": unique}}}
    with Runtime.from_mapping(document) as rt:
        store = rt.state("bright")
        assert type(store.component).__name__ == "ShinyState"
        store.save("k", "v")
        assert store.get_value("k") == "v"


def test_without_the_distribution_the_type_is_unknown(tmp_path: Path) -> None:
    registry._entry_points.cache_clear()
    with pytest.raises(SettingsError) as raised:
        Runtime.from_mapping({"state": {"bright": {"type": "state.shiny"}}})
    assert "unknown component type 'state.shiny'" in str(raised.value)


def test_a_type_in_the_wrong_block_is_refused_even_from_a_plugin(plugin: str) -> None:
    with pytest.raises(SettingsError, match="is a state component, not lock"):
        Runtime.from_mapping({"lock": {"l": {"type": "state.shiny"}}})
