import time

from celery import chain, group
from shop.tasks import add, celery, price_order


def wait_for(client, task_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/orders/{task_id}").get_json()
        if body["state"] in ("SUCCESS", "FAILURE", "REJECTED"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish: {body}")


def test_order_is_priced_by_a_worker(client, worker):
    response = client.post("/orders", json={"items": ["apple", "pear"]})
    assert response.status_code == 202
    body = wait_for(client, response.get_json()["task_id"])
    assert body == {"state": "SUCCESS", "total": 1.12}


def test_a_retried_task_still_succeeds(client, worker):
    task_id = client.post("/orders", json={"items": ["melon"]}).get_json()["task_id"]
    assert wait_for(client, task_id)["total"] == 2.7


def test_results_and_canvas(worker):
    assert add.delay(2, 3).get(timeout=20) == 5
    assert chain(add.s(1, 2), add.s(10)).apply_async().get(timeout=20) == 13
    assert group(add.s(i, i) for i in range(4)).apply_async().get(timeout=20) == [0, 2, 4, 6]
    assert price_order.apply_async((["apple"], 0), countdown=0.2).get(timeout=20) == 0.5


def test_config_comes_from_object_and_env(client, monkeypatch):
    assert client.get("/config/DISCOUNT_PERCENT").get_json() == {"DISCOUNT_PERCENT": 10}
    from shop import create_app

    monkeypatch.setenv("SHOP_DISCOUNT_PERCENT", "25")
    app = create_app()
    assert app.config["DISCOUNT_PERCENT"] == 25
    assert celery.conf.broker_url == app.config["BROKER_URL"]
