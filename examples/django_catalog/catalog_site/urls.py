from catalog import views
from django.urls import path

urlpatterns = [
    path("products/", views.product_list),
    path("products/<slug:slug>/views", views.count_view),
    path("reindex/", views.reindex),
    path("banner/", views.banner),
]
