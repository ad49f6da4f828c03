"""Settings of the shop, overridable with SHOP_* environment variables."""

import os


class Defaults:
    BROKER_URL = os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/5")
    RESULT_BACKEND = os.environ.get("SHOP_RESULT_BACKEND", BROKER_URL)
    DISCOUNT_PERCENT = 10
    PRICES = {"apple": 0.5, "pear": 0.75, "melon": 3.0}
