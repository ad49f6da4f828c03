"""Settings: capa.toml / capa.yaml, CAPA_* variables, Dapr component files, and every error path."""

from __future__ import annotations

import os
import string
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from capa_core import Runtime, SettingsError, load_settings
from capa_core.settings import ComponentSpec, SecretRef, Settings
from capa_core.spi import StateComponent

EMBEDDED = ("state", "pubsub", "configuration", "lock")


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(directory: Path, env: Mapping[str, str] | None = None, **kw: Any) -> Settings:
    return load_settings(env=env or {}, cwd=directory, **kw)


def settings_error(directory: Path, env: Mapping[str, str] | None = None, **kw: Any) -> str:
    with pytest.raises(SettingsError) as raised:
        load(directory, env, **kw)
    return str(raised.value)


# --- no settings ---------------------------------------------------------------------------------


def test_without_settings_every_block_runs_on_sqlite_in_the_working_directory(
    tmp_path: Path,
) -> None:
    found = load(tmp_path)
    assert found.sources == ()
    assert found.app_id == ""
    assert (found.codec, found.allow_pickle, found.retries) == ("json", False, 3)
    for block in EMBEDDED:
        spec = found.components[(block, "default")]
        assert spec.type == f"{block}.sqlite"
        assert spec.metadata == {"url": f"sqlite:///{tmp_path / 'capa.db'}"}
    assert found.components[("secrets", "default")].type == "secrets.env"
    assert found.names("state") == ["default"]


def test_runtime_without_settings_works_in_the_working_directory(in_tmp: Path) -> None:
    with Runtime.from_settings() as rt:
        rt.state().save("k", {"v": 1})
        assert rt.state().get_value("k") == {"v": 1}
    assert (in_tmp / "capa.db").exists()


# --- capa.toml and capa.yaml ---------------------------------------------------------------------

TOML = """\
    [capa]
    app_id = "shop"
    codec = "json"
    retries = 5
    default_url = "memory://shared"

    [state.cache]
    url = "memory://cache"
    keyPrefix = "none"

    [pubsub.events]
    type = "pubsub.memory"
    lease = 3
    """

YAML = """\
    capa:
      app_id: shop
      codec: json
      retries: 5
      default_url: memory://shared
    state:
      cache:
        url: memory://cache
        keyPrefix: none
    pubsub:
      events:
        type: pubsub.memory
        lease: 3
    """


@pytest.mark.parametrize(("name", "text"), [("capa.toml", TOML), ("capa.yaml", YAML),
                                            ("capa.yml", YAML)])
def test_settings_file_forms_read_the_same(tmp_path: Path, name: str, text: str) -> None:
    file = write(tmp_path, name, text)
    found = load(tmp_path)
    assert found.sources == (str(file),)
    assert (found.app_id, found.codec, found.retries) == ("shop", "json", 5)
    assert found.default_url == "memory://shared"
    cache = found.components[("state", "cache")]
    assert cache == ComponentSpec(
        "state", "cache", "state.memory", {"url": "memory://cache", "keyPrefix": "none"},
        f"{file} [state.cache]",
    )
    events = found.components[("pubsub", "events")]
    assert (events.type, dict(events.metadata)) == ("pubsub.memory", {"lease": 3})
    # Blocks left out run on the default URL.
    assert found.components[("lock", "default")].metadata == {"url": "memory://shared"}
    assert found.components[("lock", "default")].type == "lock.memory"


def test_capa_toml_wins_over_capa_yaml(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", '[capa]\napp_id = "from-toml"\n')
    write(tmp_path, "capa.yaml", "capa:\n  app_id: from-yaml\n")
    assert load(tmp_path).app_id == "from-toml"


def test_explicit_path_and_capa_config(tmp_path: Path) -> None:
    write(tmp_path, "conf/other.yaml", "capa:\n  app_id: explicit\n")
    write(tmp_path, "capa.toml", '[capa]\napp_id = "implicit"\n')
    assert load(tmp_path, path="conf/other.yaml").app_id == "explicit"
    assert load(tmp_path, {"CAPA_CONFIG": "conf/other.yaml"}).app_id == "explicit"
    assert load(tmp_path, path=tmp_path / "conf" / "other.yaml").app_id == "explicit"


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    message = settings_error(tmp_path, path="nope.toml")
    assert "nope.toml" in message and "does not exist" in message
    message = settings_error(tmp_path, {"CAPA_CONFIG": "gone.yaml"})
    assert "gone.yaml" in message and "CAPA_CONFIG" in message


def test_an_empty_yaml_file_is_no_settings(tmp_path: Path) -> None:
    write(tmp_path, "capa.yaml", "# nothing yet\n")
    assert load(tmp_path).components[("state", "default")].type == "state.sqlite"


def test_runtime_from_a_settings_file(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", TOML)
    with Runtime.from_settings(cwd=tmp_path, env={}) as rt:
        assert rt.app_id == "shop"
        rt.state("cache").save("k", 1)
        assert rt.state("cache").get_value("k") == 1
        assert rt.pubsub("events").lease == 3.0
        # keyPrefix stays component metadata; the client option is key_prefix.
        assert rt.state("cache").key_prefix == "shop||"


def test_runtime_from_mapping_and_client_options(unique: str) -> None:
    document = {
        "capa": {"app_id": "shop", "default_url": f"memory://{unique}"},
        "state": {
            "shared": {"url": f"memory://{unique}", "key_prefix": "none"},
            "named": {"url": f"memory://{unique}", "key_prefix": "team"},
            "guarded": {"url": f"memory://{unique}", "concurrency": "first-write"},
        },
    }
    with Runtime.from_mapping(document) as rt:
        assert rt.state("shared").key_prefix == ""
        assert rt.state("named").key_prefix == "team||"
        assert rt.state().key_prefix == "shop||"
        guarded = rt.state("guarded")
        guarded.save("k", 1)
        with pytest.raises(Exception, match="etag mismatch"):
            guarded.save("k", 2)


@pytest.mark.parametrize(
    ("block", "key", "value"),
    [("state", "concurrency", "sometimes"), ("state", "key_prefix", 3),
     ("pubsub", "lease", "soon"), ("pubsub", "lease", 0), ("pubsub", "lease", True),
     ("lock", "key_prefix", ["x"])],
)
def test_a_bad_client_option_fails_at_start_up(
    unique: str, block: str, key: str, value: Any
) -> None:
    document = {block: {"s": {"url": f"memory://{unique}", key: value}}}
    with pytest.raises(SettingsError) as raised:
        Runtime.from_mapping(document)
    assert raised.value.key == key
    assert f"[{block}.s]" in str(raised.value)


def test_asking_for_a_component_that_is_not_configured(unique: str) -> None:
    from capa_core import ComponentNotFound

    document = {"state": {"cache": {"url": f"memory://{unique}"}}}
    with Runtime.from_mapping(document) as rt, pytest.raises(ComponentNotFound) as raised:
        rt.state("cahce")
    message = str(raised.value)
    assert "did you mean 'cache'" in message and "'default'" in message
    assert "[state.cahce]" in message


# --- URL shorthand and types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", "memory"),
        ("memory://name", "memory"),
        ("sqlite:///tmp/x.db", "sqlite"),
        ("SQLITE:///tmp/x.db", "sqlite"),
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://user:pw@host:6380", "redis"),
        ("postgresql://postgres@127.0.0.1/test", "postgres"),
        ("postgres://postgres@127.0.0.1/test", "postgres"),
    ],
)
def test_url_shorthand_picks_the_type(tmp_path: Path, url: str, kind: str) -> None:
    found = load(tmp_path, document={"state": {"s": {"url": url}}})
    assert found.components[("state", "s")].type == f"state.{kind}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("state.memory", "state.memory"),
        ("State.Memory", "state.memory"),
        (" state.memory ", "state.memory"),
        ("state.in-memory", "state.memory"),
        ("state.postgresql", "state.postgres"),
        ("secretstores.local.env", "secrets.env"),
        ("secretstores.env", "secrets.env"),
        ("memory", "state.memory"),  # a bare kind belongs to the block it is written under
        ("Redis", "state.redis"),
        ("sqlite", "pubsub.sqlite"),
    ],
)
def test_type_names_and_dapr_aliases(tmp_path: Path, given: str, expected: str) -> None:
    block = expected.split(".")[0]
    found = load(tmp_path, document={block: {"x": {"type": given}}})
    assert found.components[(block, "x")].type == expected


def test_unknown_type_lists_known_types_with_did_you_mean(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", '[state.cache]\ntype = "state.reddis"\n')
    with pytest.raises(SettingsError) as raised:
        load(tmp_path)
    error = raised.value
    assert error.source == str(tmp_path / "capa.toml")
    assert error.key == "state.cache"
    message = str(error)
    assert "did you mean 'state.redis'" in message
    assert "known types:" in message and "state.memory" in message and "pubsub.sqlite" in message
    assert "capa.components" in message
    assert "group. Fix: " in message


def test_an_unknown_bare_kind_suggests_the_blocks_own_types(tmp_path: Path) -> None:
    message = settings_error(tmp_path, document={"state": {"cache": {"type": "reddis"}}})
    assert "'state.reddis'" in message and "did you mean 'state.redis'" in message


def test_unknown_url_scheme_lists_the_schemes(tmp_path: Path) -> None:
    message = settings_error(tmp_path, document={"state": {"s": {"url": "mongodb://h/db"}}})
    assert "mongodb://" in message and "redis://" in message and "sqlite://" in message


def test_unparsable_url_is_a_settings_error(tmp_path: Path) -> None:
    message = settings_error(tmp_path, document={"state": {"s": {"url": "http://[broken"}}})
    assert "state.s" in message


def test_a_type_of_another_block_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", '[pubsub.events]\ntype = "state.memory"\n')
    with pytest.raises(SettingsError) as raised:
        load(tmp_path)
    assert raised.value.key == "pubsub.events.type"
    assert "is a state component, not pubsub" in str(raised.value)
    assert "[state.events]" in str(raised.value)


# --- error paths of the file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[statee.cache]\nurl = "memory://"\n', "statee", "not a known section"),
        ('capa = "x"\n', "capa", "must be a table"),
        ('[capa]\napp_idd = "x"\n', "capa.app_idd", "app_id"),
        ('[capa]\nretries = "3"\n', "capa.retries", "int"),
        ("[capa]\nretries = true\n", "capa.retries", "int"),
        ('[capa]\nallow_pickle = "yes"\n', "capa.allow_pickle", "bool"),
        ("[capa]\napp_id = 3\n", "capa.app_id", "str"),
        ("state = 3\n", "state", "table of named components"),
        ('[state]\ncache = "memory://"\n', "state.cache", 'url = "..."'),
        ("[state.cache]\nkeyPrefix = 'x'\n", "state.cache", "neither type nor url"),
        ("[state.cache]\ntype = 3\n", "state.cache.type", "must be a string"),
        ("[state.cache]\nurl = 3\n", "state.cache", "neither type nor url"),
        ('[capa]\ncomponents_dir = "nowhere"\n', "components_dir", "not a directory"),
        ("[capa\napp_id = 'x'\n", "(syntax)", "cannot parse"),
    ],
)
def test_broken_toml_names_file_key_and_fix(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    write(tmp_path, "capa.toml", text)
    with pytest.raises(SettingsError) as raised:
        load(tmp_path)
    error = raised.value
    assert error.source == str(tmp_path / "capa.toml")
    assert error.key == key
    assert words in str(error)
    assert ". Fix: " in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("- just\n- a list\n", "(top level)"),
        ("capa: [1, 2]\n", "capa"),
        ("state:\n  cache: [1]\n", "state.cache"),
        ("capa:\n  app_id: [unclosed\n", "(syntax)"),
        ("capa: {retries: 2.5}\n", "capa.retries"),
    ],
)
def test_broken_yaml_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    write(tmp_path, "capa.yaml", text)
    with pytest.raises(SettingsError) as raised:
        load(tmp_path)
    assert raised.value.source == str(tmp_path / "capa.yaml")
    assert raised.value.key == key


def test_a_bad_option_in_the_file_fails_at_start_up(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", '[pubsub.events]\nurl = "memory://"\nlease = "soon"\n')
    with pytest.raises(SettingsError) as raised:
        Runtime.from_settings(cwd=tmp_path, env={})
    assert raised.value.key == "lease"
    assert f"{tmp_path / 'capa.toml'} [pubsub.events]" in str(raised.value)


# --- environment variables -----------------------------------------------------------------------


def test_capa_variables_set_capa_keys(tmp_path: Path) -> None:
    env = {
        "CAPA_APP_ID": "from-env", "CAPA_CODEC": "json", "CAPA_ALLOW_PICKLE": "yes",
        "CAPA_RETRIES": "7", "CAPA_DEFAULT_URL": "memory://env",
    }
    found = load(tmp_path, env)
    assert (found.app_id, found.codec, found.allow_pickle, found.retries) == (
        "from-env", "json", True, 7,
    )
    assert found.components[("state", "default")].metadata == {"url": "memory://env"}


def test_variables_win_over_the_file(tmp_path: Path) -> None:
    write(tmp_path, "capa.toml", '[capa]\napp_id = "file"\n[state.cache]\nurl = "memory://a"\n')
    found = load(tmp_path, {"CAPA_APP_ID": "env", "CAPA_STATE__CACHE__URL": "memory://b"})
    assert found.app_id == "env"
    cache = found.components[("state", "cache")]
    assert cache.metadata == {"url": "memory://b"}
    assert cache.source == "environment [state.cache]"


def test_component_variables(tmp_path: Path) -> None:
    env = {
        "CAPA_STATE__CACHE__URL": "memory://cache",
        "CAPA_STATE__CACHE__TTL": "30",
        "CAPA_PUBSUB__EVENTS__TYPE": "pubsub.memory",
        "CAPA_LOCK__DEFAULT__URL": "memory://locks",
        "CAPA_UNRELATED": "ignored",
        "OTHER__X__Y": "ignored",
    }
    found = load(tmp_path, env)
    assert found.components[("state", "cache")].metadata == {
        "url": "memory://cache", "ttl": "30",
    }
    assert found.components[("pubsub", "events")].type == "pubsub.memory"
    assert found.components[("lock", "default")].type == "lock.memory"
    assert found.names("state") == ["cache", "default"]


def test_a_variable_reaches_a_camel_case_setting(tmp_path: Path) -> None:
    # Environment variable names are upper case: the key arrives as "publisherconfirm" and
    # still sets publisherConfirm (Dapr matches metadata names regardless of case too).
    from capa_core.registry import resolve

    env = {
        "CAPA_PUBSUB__EVENTS__URL": "amqp://guest:guest@127.0.0.1:5672/",
        "CAPA_PUBSUB__EVENTS__PUBLISHERCONFIRM": "false",
        "CAPA_PUBSUB__EVENTS__QUEUETYPE": "classic",
    }
    spec = load(tmp_path, env).components[("pubsub", "events")]
    bus = resolve(spec.type)(spec.name, spec.metadata, source=spec.source)
    assert (bus.publisher_confirm, bus.queue_type) == (False, "classic")
    env["CAPA_PUBSUB__EVENTS__PUBLISHERCONFIRM"] = "sometimes"
    spec = load(tmp_path, env).components[("pubsub", "events")]
    with pytest.raises(SettingsError, match=r"publisherConfirm.*'sometimes'"):
        resolve(spec.type)(spec.name, spec.metadata, source=spec.source)


def test_an_exactly_named_setting_wins_over_one_that_differs_in_case() -> None:
    from capa_core.components.memory import MemoryState

    state = MemoryState("s", {"keyprefix": "folded", "keyPrefix": "exact", "TTL": "5"})
    assert state.setting("keyPrefix") == ("keyPrefix", "exact")
    assert state.setting("ttl") == ("TTL", "5")
    assert state.setting("absent", "alsoAbsent") is None


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("CAPA_STATE__CACHE", "memory://", "CAPA_<BLOCK>__<NAME>__<KEY>"),
        ("CAPA_STATE__CACHE__URL__X", "memory://", "CAPA_<BLOCK>__<NAME>__<KEY>"),
        ("CAPA_QUEUE__JOBS__URL", "memory://", "blocks are"),
        ("CAPA_STATE____URL", "memory://", "CAPA_<BLOCK>__<NAME>__<KEY>"),
        ("CAPA_STATE__CACHE__URL", "mongodb://x", "mongodb://"),
        ("CAPA_STATE__CACHE__TYPE", "state.nope", "known types"),
        ("CAPA_RETRIES", "three", "not an integer"),
        ("CAPA_ALLOW_PICKLE", "maybe", "not a boolean"),
    ],
)
def test_bad_variables_name_the_variable(
    tmp_path: Path, var: str, value: str, words: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        load(tmp_path, {var: value})
    message = str(raised.value)
    assert words in message
    assert var in message or "environment" in message


# --- Dapr component files ------------------------------------------------------------------------

DAPR_STATE = """\
    apiVersion: dapr.io/v1alpha1
    kind: Component
    metadata:
      name: orders
    spec:
      type: state.in-memory
      version: v1
      metadata:
      - name: url
        value: memory://orders
      - name: keyPrefix
        value: none
      - name: password
        secretKeyRef:
          name: {secret}
          key: {secret}
    auth:
      secretStore: vault
    """


def dapr_dir(tmp_path: Path, secret: str, extra: str = "") -> Path:
    write(tmp_path, "capa.toml", textwrap.dedent(f"""\
        [capa]
        components_dir = "components"
        [secrets.vault]
        type = "secrets.env"
        prefix = "{secret}_"
        """))
    write(tmp_path, "components/state.yaml", DAPR_STATE.replace("{secret}", "db"))
    if extra:
        write(tmp_path, "components/extra.yaml", extra)
    return tmp_path / "components"


def test_dapr_components_are_read_and_secrets_resolved(
    tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"T{unique.upper()}"
    directory = dapr_dir(tmp_path, prefix, textwrap.dedent("""\
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: tracing}
        ---
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: events}
        spec:
          type: pubsub.in-memory
          metadata: []
        ---
        """))
    found = load(tmp_path)
    assert str(directory) in found.sources
    orders = found.components[("state", "orders")]
    assert orders.type == "state.memory"
    assert orders.metadata["password"] == SecretRef("vault", "db", "db")
    assert orders.source == f"{directory / 'state.yaml'} [state.orders]"
    assert found.components[("pubsub", "events")].type == "pubsub.memory"
    assert found.names("pubsub") == ["default", "events"]

    monkeypatch.setenv(f"{prefix}_db", "s3cret")
    with Runtime.from_settings(cwd=tmp_path, env={}) as rt:
        component = rt.component("state", "orders", StateComponent)
        assert component.metadata["password"] == "s3cret"
        assert rt.state("orders").key_prefix == ""  # Dapr's keyPrefix is metadata, not ours


def test_secret_references_in_capa_toml(unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"T{unique}_token", "abc")
    document = {
        "secrets": {"vault": {"type": "secrets.env", "prefix": f"T{unique}_"}},
        "state": {"s": {"url": "memory://", "token": {"secret": "token", "store": "vault"}}},
    }
    with Runtime.from_mapping(document) as rt:
        assert rt.component("state", "s", StateComponent).metadata["token"] == "abc"


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ({"secret": "token", "store": "nowhere"}, "not configured"),
        ({"secret": "token", "store": "vault", "key": "other"}, "has no key 'other'"),
        ({"secret": "absent", "store": "vault"}, "absent"),
    ],
)
def test_unresolvable_secret_references_fail_at_start_up(
    unique: str, monkeypatch: pytest.MonkeyPatch, ref: dict[str, str], words: str
) -> None:
    monkeypatch.setenv(f"T{unique}_token", "abc")
    document = {
        "secrets": {"vault": {"type": "secrets.env", "prefix": f"T{unique}_"}},
        "state": {"s": {"url": "memory://", "token": ref}},
    }
    with pytest.raises(SettingsError) as raised:
        Runtime.from_mapping(document)
    assert raised.value.key == "token"
    assert "[state.s]" in str(raised.value)
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: Component\nmetadata: {name: x}\nspec: {metadata: []}\n", "spec.type"),
        ("kind: Component\nspec: {type: state.in-memory}\n", "metadata.name"),
        ("kind: Component\nmetadata: {name: x}\nspec:\n  type: bindings.kafka\n",
         "not a supported building block"),
        ("kind: Component\nmetadata: {name: x}\nspec:\n  type: state.in-memory\n"
         "  metadata:\n  - value: 1\n", "has no name"),
        ("kind: Component\nmetadata: {name: x}\nspec:\n  type: state.nope\n", "known types"),
        ("kind: Component\nmetadata: {name: x\n", "cannot parse"),
        ("kind: Component\nmetadata: {name: x}\nspec:\n  type: state.in-memory\n"
         "  metadata:\n  - {name: type, value: state.redis}\n", "clashes with the component's"),
    ],
)
def test_broken_dapr_components_name_the_file(tmp_path: Path, text: str, words: str) -> None:
    directory = dapr_dir(tmp_path, "UNUSED", text)
    with pytest.raises(SettingsError) as raised:
        load(tmp_path)
    assert str(directory / "extra.yaml") in str(raised.value)
    assert words in str(raised.value)


# --- properties ----------------------------------------------------------------------------------

# Names without "_": in CAPA_<BLOCK>__<NAME>__<KEY>, "a_" + "__" + "b" reads as "a" + "__" + "_b".
names = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12)
metadata_keys = st.text(string.ascii_letters + "_", min_size=1, max_size=12).filter(
    lambda k: k.lower() not in {"type", "url"} and not k.startswith("_") and not k.endswith("_")
    and "__" not in k
)
metadata_values = st.one_of(
    st.text(max_size=20).filter(lambda s: "\x00" not in s),
    st.integers(-(2**31), 2**31),
    st.booleans(),
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[dict[str, Any], dict[tuple[str, str], ComponentSpec]]:
    """A valid settings document and the specs it must produce (before defaults)."""
    document: dict[str, Any] = {}
    expected: dict[tuple[str, str], ComponentSpec] = {}
    capa = draw(st.fixed_dictionaries({}, optional={
        "app_id": names, "retries": st.integers(1, 10), "allow_pickle": st.booleans(),
        "codec": st.just("json"), "default_url": st.just("memory://d"),
    }))
    if capa:
        document["capa"] = capa
    for block in draw(st.lists(st.sampled_from(EMBEDDED), unique=True)):
        table: dict[str, Any] = {}
        for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
            body = draw(st.dictionaries(metadata_keys, metadata_values, max_size=3))
            if draw(st.booleans()):
                body["url"] = f"memory://{draw(names)}"
                metadata = dict(body)
            else:
                metadata = dict(body)
                body["type"] = draw(st.sampled_from([f"{block}.memory", f"{block}.MEMORY"]))
            table[name] = body
            expected[(block, name)] = ComponentSpec(
                block, name, f"{block}.memory", metadata, f"[{block}.{name}]"
            )
        document[block] = table
    return document, expected


def check(found: Settings, document: dict[str, Any], expected: dict[Any, ComponentSpec]) -> None:
    capa = document.get("capa", {})
    assert found.app_id == capa.get("app_id", "")
    assert found.retries == capa.get("retries", 3)
    assert found.allow_pickle == capa.get("allow_pickle", False)
    for key, spec in expected.items():
        got = found.components[key]
        assert (got.block, got.name, got.type) == (spec.block, spec.name, spec.type)
        assert dict(got.metadata) == dict(spec.metadata)
        assert got.source.endswith(spec.source)
    for block in EMBEDDED:
        assert (block, "default") in found.components


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.sampled_from(["capa.toml", "capa.yaml", "mapping"]))
def test_any_valid_document_round_trips_to_its_specs(
    case: tuple[dict[str, Any], dict[Any, ComponentSpec]], form: str
) -> None:
    document, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if form == "mapping":
            found = load_settings(document=document, env={}, cwd=directory)
        else:
            text = tomli_w.dumps(document) if form == "capa.toml" else yaml.safe_dump(document)
            (directory / form).write_text(text, encoding="utf-8")
            found = load_settings(env={}, cwd=directory)
    check(found, document, expected)


@settings(max_examples=60, deadline=None)
@given(documents())
def test_the_same_components_from_environment_variables(
    case: tuple[dict[str, Any], dict[Any, ComponentSpec]]
) -> None:
    document, expected = case
    for table in document.values():  # variables are case-insensitive: "a" and "A" would clash
        for body in table.values() if isinstance(table, dict) else ():
            if isinstance(body, dict):
                assume(len({k.lower() for k in body}) == len(body))
    env = {f"CAPA_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in document.get("capa", {}).items()}
    for block, table in document.items():
        if block == "capa":
            continue
        for name, body in table.items():
            for key, value in body.items():
                env[f"CAPA_{block.upper()}__{name.upper()}__{key.upper()}"] = str(value)
    found = load_settings(env=env, cwd=tempfile.gettempdir())
    for (block, name), spec in expected.items():
        got = found.components[(block, name)]
        assert got.type == spec.type
        assert dict(got.metadata) == {k.lower(): str(v) for k, v in spec.metadata.items()}


env_names = st.text(string.ascii_letters + string.digits + "_", max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(env_names.map(lambda n: "CAPA_" + n), st.text(max_size=30), max_size=4))
def test_any_capa_variable_is_accepted_or_a_settings_error(env: dict[str, str]) -> None:
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    env.pop("CAPA_CONFIG", None)  # a path: tested above
    env.pop("CAPA_COMPONENTS_DIR", None)
    try:
        load_settings(env=env, cwd=tempfile.gettempdir())
    except SettingsError as exc:
        assert exc.source and exc.key and "Fix: " in str(exc)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=15)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
section_names = st.sampled_from(["capa", *EMBEDDED, "secrets", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(section_names, json_values, max_size=4))
def test_any_document_is_accepted_or_a_settings_error(document: dict[str, Any]) -> None:
    if isinstance(document.get("capa"), dict):
        document["capa"].pop("components_dir", None)
    try:
        load_settings(document=document, env={}, cwd=tempfile.gettempdir())
    except SettingsError as exc:
        assert exc.source and exc.key and "Fix: " in str(exc)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["url", "type", "keyPrefix", "lease"]),
        st.one_of(st.text(max_size=30), st.sampled_from(
            ["memory://", "sqlite://", "redis://[", "state.memory", "pubsub.memory", "x://y"]
        )),
        max_size=3,
    ),
    st.sampled_from(EMBEDDED),
)
def test_any_component_table_is_accepted_or_a_settings_error(
    body: dict[str, str], block: str
) -> None:
    try:
        load_settings(document={block: {"c": body}}, env={}, cwd=tempfile.gettempdir())
    except SettingsError as exc:
        assert exc.key.startswith(f"{block}.c")


@pytest.fixture(autouse=True)
def _no_capa_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings gets env={} everywhere, but Runtime.from_settings(env=None) reads os.environ.
    for var in [v for v in os.environ if v.startswith("CAPA_")]:
        monkeypatch.delenv(var)


dapr_values = st.one_of(
    json_values,
    st.sampled_from(["state.in-memory", "pubsub.in-memory", "bindings.kafka", "state.nope"]),
)


@st.composite
def dapr_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Dapr component documents, well-formed and not, shaped enough to reach every branch."""
    entry = st.one_of(
        st.fixed_dictionaries(
            {"name": st.text(max_size=8)},
            optional={"value": json_values, "secretKeyRef": dapr_values},
        ),
        dapr_values,
    )
    spec = st.one_of(
        st.fixed_dictionaries({}, optional={"type": dapr_values,
                                            "metadata": st.one_of(st.lists(entry, max_size=3),
                                                                  dapr_values)}),
        dapr_values,
    )
    return draw(st.fixed_dictionaries(
        {"kind": st.sampled_from(["Component", "Configuration", 3])},
        optional={
            "apiVersion": st.just("dapr.io/v1alpha1"),
            "metadata": st.one_of(st.fixed_dictionaries({"name": dapr_values}), dapr_values),
            "spec": spec,
            "auth": st.one_of(st.fixed_dictionaries({"secretStore": dapr_values}), dapr_values),
        },
    ))


@settings(max_examples=150, deadline=None)
@given(st.lists(dapr_documents(), min_size=1, max_size=3))
def test_any_dapr_component_file_is_accepted_or_a_settings_error(
    documents: list[dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "components").mkdir()
        (directory / "components" / "c.yaml").write_text(yaml.safe_dump_all(documents))
        try:
            load_settings(document={"capa": {"components_dir": "components"}}, env={},
                          cwd=directory)
        except SettingsError as exc:
            assert str(directory / "components" / "c.yaml") in exc.source
