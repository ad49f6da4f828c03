"""A small Flask shop: orders are priced by a Celery task; prices come from the app config."""

from flask import Flask, jsonify, request

from .tasks import celery, price_order


def create_app(**overrides):
    app = Flask(__name__)
    app.config.from_object("shop.config.Defaults")
    app.config.from_prefixed_env("SHOP")
    app.config.update(overrides)
    celery.conf.update(
        broker_url=app.config["BROKER_URL"],
        result_backend=app.config["RESULT_BACKEND"],
    )

    @app.post("/orders")
    def create_order():
        order = request.get_json()
        result = price_order.delay(order["items"], app.config["DISCOUNT_PERCENT"])
        return jsonify({"task_id": result.id}), 202

    @app.get("/orders/<task_id>")
    def order_status(task_id):
        result = celery.AsyncResult(task_id)
        body = {"state": result.state}
        if result.successful():
            body["total"] = result.get(timeout=1)
        return jsonify(body)

    @app.get("/config/<key>")
    def config_value(key):
        return jsonify({key: app.config.get(key)})

    return app
