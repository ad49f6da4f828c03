"""Views that lean on the cache, the task queue and dynaconf settings."""

from django.core.cache import cache
from django.http import JsonResponse
from django.views.decorators.cache import cache_page, never_cache

from .conf import settings
from .tasks import rebuild_index


def product_list(request):
    products = cache.get_or_set("products", lambda: list(settings.PRODUCTS), timeout=30)
    page = products[: settings.PAGE_SIZE]
    return JsonResponse({"products": page, "page_size": settings.PAGE_SIZE})


@never_cache
def count_view(request, slug):
    key = f"views:{slug}"
    cache.add(key, 0)
    return JsonResponse({"slug": slug, "views": cache.incr(key)})


@never_cache
def reindex(request):
    result = rebuild_index.delay(list(settings.PRODUCTS))
    return JsonResponse({"indexed": result.get(timeout=20), "index": cache.get("catalog:index")})


@cache_page(30)
def banner(request):
    # Counts renders: a cached page does not render again.
    cache.add("banner:renders", 0)
    cache.incr("banner:renders")
    return JsonResponse({"banner": settings.BANNER})
