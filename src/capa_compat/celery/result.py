"""Results as Celery returns them; they read through the capa result backend."""

from celery.result import (
    AsyncResult,
    EagerResult,
    GroupResult,
    ResultBase,
    ResultSet,
    allow_join_result,
    assert_will_not_block,
    denied_join_result,
    result_from_tuple,
)

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultBase",
    "ResultSet",
    "allow_join_result",
    "assert_will_not_block",
    "denied_join_result",
    "result_from_tuple",
]
