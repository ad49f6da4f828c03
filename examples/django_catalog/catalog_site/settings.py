"""Django settings of the catalog site."""

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
ROOT_URLCONF = "catalog_site.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "catalog"]
MIDDLEWARE = [
    "django.middleware.cache.UpdateCacheMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.cache.FetchFromCacheMiddleware",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True

REDIS_URL = os.environ.get("CATALOG_REDIS_URL", "redis://127.0.0.1:6379/6")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("CATALOG_CACHE_LOCATION", REDIS_URL),
        "KEY_PREFIX": "catalog",
        "TIMEOUT": 60,
    }
}
CACHE_MIDDLEWARE_SECONDS = 30

CELERY_BROKER_URL = os.environ.get("CATALOG_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CATALOG_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = "catalog"
