from catalog.conf import settings
from django.core.cache import cache, caches


def test_products_are_paged_by_the_dynaconf_setting(client):
    body = client.get("/products/").json()
    assert body == {"products": ["apple", "pear"], "page_size": 2}
    assert cache.get("products") == ["apple", "pear", "melon"]


def test_view_counter_increments(client):
    assert client.get("/products/pear/views").json()["views"] == 1
    assert client.get("/products/pear/views").json()["views"] == 2
    assert caches["default"].get("views:pear") == 2


def test_cache_page_serves_the_second_request_from_cache(client):
    assert client.get("/banner/").json() == {"banner": "Welcome to the catalog"}
    assert client.get("/banner/").json() == {"banner": "Welcome to the catalog"}
    assert cache.get("banner:renders") == 1


def test_reindex_runs_in_a_worker(client, worker):
    body = client.get("/reindex/").json()
    assert body == {"indexed": 3, "index": {"apple": 0, "melon": 1, "pear": 2}}


def test_environment_variables_override_dynaconf(monkeypatch):
    monkeypatch.setenv("CATALOG_PAGE_SIZE", "5")
    settings.reload()
    try:
        assert settings.PAGE_SIZE == 5
    finally:
        monkeypatch.delenv("CATALOG_PAGE_SIZE")
        settings.reload()
    assert settings.PAGE_SIZE == 2


def test_cache_timeouts_and_many():
    cache.set_many({"a": 1, "b": 2}, timeout=30)
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    cache.set("gone", 1, timeout=0)
    assert cache.get("gone") is None
    assert cache.add("a", 5) is False
