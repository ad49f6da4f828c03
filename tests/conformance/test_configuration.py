"""Conformance of configuration components: every Target of the "configuration" block.

Dapr components-contrib's configuration cases (get by keys / all / missing, several subscribers
seeing updates and deletes, nothing after unsubscribe) plus group/label/app separation and the
checks that undeclared features are refused.
"""

from __future__ import annotations

import threading

import pytest
from tests.conformance.support import COMPONENT, RuntimeFactory, stays, wait_until

from capa_core import (
    Configuration,
    ConfigurationChange,
    ConfigurationItem,
    Feature,
    Runtime,
    UnsupportedFeature,
)

BLOCK = "configuration"
PUSH_WITHIN = 5.0  # seconds a pushed change may take (the target is 100 ms; CI machines are slow)


class Changes:
    """A subscription handler recording every pushed change."""

    def __init__(self) -> None:
        self.changes: list[ConfigurationChange] = []
        self._lock = threading.Lock()

    def __call__(self, changes: list[ConfigurationChange]) -> None:
        with self._lock:
            self.changes.extend(changes)

    def seen(self) -> list[tuple[str, str, bool]]:
        with self._lock:
            return [(c.item.key, c.item.content, c.deleted) for c in self.changes]

    def wait_for(self, *expected: tuple[str, str, bool]) -> None:
        wait_until(lambda: all(e in self.seen() for e in expected), timeout=PUSH_WITHIN)


class TestConfigurationConformance:
    @pytest.fixture
    def config(self, runtime: Runtime) -> Configuration:
        return runtime.configuration(COMPONENT)

    @pytest.fixture
    def features(self, config: Configuration) -> frozenset[Feature]:
        return config.component.features

    @pytest.fixture
    def writable(self, features: frozenset[Feature]) -> None:
        if Feature.WRITE not in features:
            pytest.skip("the component is read only")

    @pytest.fixture
    def watchable(self, writable: None, features: frozenset[Feature]) -> None:
        if Feature.WATCH not in features:
            pytest.skip("the component does not push changes")

    # --- get, save, delete ----------------------------------------------------------------------

    @pytest.mark.usefixtures("writable")
    def test_get_by_keys_all_and_missing(self, config: Configuration) -> None:
        config.save({"db.pool": "10", "db.host": "localhost", "feature.x": "on"})
        assert config.get_map(["db.pool", "feature.x"]) == {"db.pool": "10", "feature.x": "on"}
        assert config.get_map([]) == {"db.pool": "10", "db.host": "localhost", "feature.x": "on"}
        assert config.get_map() == config.get_map([])
        assert config.get_map(["db.pool", "missing"]) == {"db.pool": "10"}
        assert config.get(["missing"]) == []
        assert [i.key for i in config.get("db.host")] == ["db.host"]

    @pytest.mark.usefixtures("writable")
    def test_get_of_an_empty_store(self, config: Configuration) -> None:
        assert config.get() == []
        assert config.get(["anything"]) == []

    @pytest.mark.usefixtures("writable")
    def test_items_keep_their_coordinates_tags_and_metadata(self, config: Configuration) -> None:
        item = ConfigurationItem(
            "db.pool", "10", "database", "prod", tags={"owner": "team-a", "tier": "1"},
            metadata={"source": "test", "note": "grüße"},
        )
        config.save([item])
        assert config.get(["db.pool"], group="database", label="prod") == [item]

    @pytest.mark.usefixtures("writable")
    def test_content_is_any_text(self, config: Configuration) -> None:
        contents = {"empty": "", "json": '{"a": [1, 2]}', "unicode": "日本語 \U0001f600",
                    "multiline": "line 1\nline 2\n", "long": "x" * 10_000}
        config.save(contents)
        assert config.get_map() == contents

    @pytest.mark.usefixtures("writable")
    def test_groups_and_labels_keep_items_apart(self, config: Configuration) -> None:
        config.save({"k": "plain"})
        config.save({"k": "group"}, group="g")
        config.save({"k": "group-prod"}, group="g", label="prod")
        config.save({"k": "label-only"}, label="prod")
        assert config.get_map(["k"]) == {"k": "plain"}
        assert config.get_map(["k"], group="g") == {"k": "group"}
        assert config.get_map(["k"], group="g", label="prod") == {"k": "group-prod"}
        assert config.get_map(["k"], label="prod") == {"k": "label-only"}
        assert config.get_map(group="g") == {"k": "group"}
        config.delete(["k"], group="g")
        assert config.get_map(["k"], group="g") == {}
        assert config.get_map(["k"], group="g", label="prod") == {"k": "group-prod"}
        assert config.get_map(["k"]) == {"k": "plain"}

    @pytest.mark.usefixtures("writable")
    def test_save_overwrites_and_delete_removes(self, config: Configuration) -> None:
        config.save({"a": "1", "b": "2"})
        config.save({"a": "one"})
        assert config.get_map() == {"a": "one", "b": "2"}
        config.delete(["a", "never-there"])
        config.delete("b")
        assert config.get_map() == {}

    @pytest.mark.usefixtures("writable")
    def test_content_must_be_text(self, config: Configuration) -> None:
        with pytest.raises(TypeError, match="text"):
            config.save([ConfigurationItem("n", 10)])  # type: ignore[arg-type]
        assert config.get() == []

    @pytest.mark.usefixtures("writable")
    def test_apps_are_isolated_and_one_app_shares(
        self, config: Configuration, make_runtime: RuntimeFactory, unique: str
    ) -> None:
        other_app = make_runtime(app_id=f"other-{unique}").configuration(COMPONENT)
        same_app = make_runtime().configuration(COMPONENT)
        config.save({"k": "mine"})
        assert other_app.get_map() == {}
        other_app.save({"k": "theirs"})
        assert config.get_map() == {"k": "mine"}
        assert same_app.get_map() == {"k": "mine"}

    # --- subscriptions --------------------------------------------------------------------------

    @pytest.mark.usefixtures("watchable")
    def test_several_subscribers_see_updates_and_deletes(
        self, config: Configuration, make_runtime: RuntimeFactory
    ) -> None:
        first, second, elsewhere = Changes(), Changes(), Changes()
        config.subscribe([], first)
        config.subscribe(["db.pool"], second)
        make_runtime().configuration(COMPONENT).subscribe([], elsewhere)  # another client
        config.save({"db.pool": "10", "db.host": "h"})
        config.save({"db.pool": "20"})
        config.delete(["db.pool"])
        expected = [("db.pool", "10", False), ("db.pool", "20", False), ("db.pool", "20", True)]
        for changes in (first, second, elsewhere):
            changes.wait_for(*expected)
        first.wait_for(("db.host", "h", False))
        assert stays(lambda: all(key == "db.pool" for key, _, _ in second.seen()), 0.3)
        deleted = [c for c in first.changes if c.deleted]
        assert [c.item.key for c in deleted] == ["db.pool"]

    @pytest.mark.usefixtures("watchable")
    def test_changes_made_by_another_client_are_pushed(
        self, config: Configuration, make_runtime: RuntimeFactory
    ) -> None:
        changes = Changes()
        config.subscribe(["k"], changes)
        writer = make_runtime().configuration(COMPONENT)
        writer.save({"k": "from elsewhere"})
        changes.wait_for(("k", "from elsewhere", False))
        writer.delete(["k"])
        changes.wait_for(("k", "from elsewhere", True))

    @pytest.mark.usefixtures("watchable")
    def test_subscriptions_narrow_by_group_and_label(self, config: Configuration) -> None:
        prod, any_group = Changes(), Changes()
        config.subscribe([], prod, group="g", label="prod")
        config.subscribe(["k"], any_group)
        config.save({"k": "dev"}, group="g", label="dev")
        config.save({"k": "prod"}, group="g", label="prod")
        config.save({"other": "x"}, group="g", label="prod")
        prod.wait_for(("k", "prod", False), ("other", "x", False))
        any_group.wait_for(("k", "dev", False), ("k", "prod", False))
        assert stays(lambda: ("k", "dev", False) not in prod.seen(), 0.3)
        assert all(c.item.group == "g" and c.item.label == "prod" for c in prod.changes)
        assert ("other", "x", False) not in any_group.seen()

    @pytest.mark.usefixtures("watchable")
    def test_no_changes_after_unsubscribe(self, config: Configuration) -> None:
        kept, closed = Changes(), Changes()
        config.subscribe(["k"], kept)
        subscription = config.subscribe(["k"], closed)
        config.save({"k": "1"})
        kept.wait_for(("k", "1", False))
        closed.wait_for(("k", "1", False))
        subscription.close()
        assert not subscription.active
        subscription.close()  # closing twice is harmless
        config.save({"k": "2"})
        config.delete(["k"])
        kept.wait_for(("k", "2", False), ("k", "2", True))
        assert stays(lambda: closed.seen() == [("k", "1", False)], 0.3)

    @pytest.mark.usefixtures("watchable")
    def test_a_failing_handler_does_not_starve_the_others(self, config: Configuration) -> None:
        def broken(changes: list[ConfigurationChange]) -> None:
            raise RuntimeError("handler bug")

        healthy = Changes()
        config.subscribe([], broken)
        config.subscribe([], healthy)
        config.save({"k": "v"})
        healthy.wait_for(("k", "v", False))

    @pytest.mark.usefixtures("watchable")
    def test_subscription_as_a_context_manager(self, config: Configuration) -> None:
        changes = Changes()
        with config.subscribe(["k"], changes) as subscription:
            config.save({"k": "in"})
            changes.wait_for(("k", "in", False))
        assert not subscription.active
        config.save({"k": "out"})
        assert stays(lambda: changes.seen() == [("k", "in", False)], 0.3)

    # --- features not declared ------------------------------------------------------------------

    def test_undeclared_features_are_refused(
        self, config: Configuration, features: frozenset[Feature]
    ) -> None:
        absent = [f for f in (Feature.WRITE, Feature.WATCH) if f not in features]
        if not absent:
            pytest.skip("the component declares write and watch")
        for feature in absent:
            assert_refused(config, feature)

    @pytest.mark.parametrize("feature", ["write", "watch"])
    def test_a_component_without_a_feature_refuses_it(
        self, config: Configuration, feature: str
    ) -> None:
        component = config.component
        component.features = component.features - {Feature(feature)}  # type: ignore[misc]
        assert_refused(config, Feature(feature))


def assert_refused(config: Configuration, feature: Feature) -> None:
    calls = {
        Feature.WRITE: [lambda: config.save({"k": "v"}), lambda: config.delete(["k"])],
        Feature.WATCH: [lambda: config.subscribe([], lambda changes: None)],
    }
    for call in calls[feature]:
        with pytest.raises(UnsupportedFeature) as raised:
            call()
        assert raised.value.feature == feature.value
        assert config.name in str(raised.value)
