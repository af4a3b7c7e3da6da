"""The one table of HTTP status ⇄ error class (``core/errors.py``), read both ways.

The master answers an error with its class's ``status`` and ``code``; the client turns the
status back into the class (``error_for_status``, through ``client/replies.py``). The first
test reads the table alone; the second asks a real master for each kind of error and checks
that its answer is the table's, and that the client reads it back as the same class.
"""

from __future__ import annotations

import json

import pytest

from conftest import Cluster
from mgpu.client.replies import error_from_reply
from mgpu.core.errors import (
    ApiError,
    Forbidden,
    MgpuError,
    NotFound,
    Rejected,
    StoreError,
    Unauthorized,
    UsageError,
    error_for_status,
)


@pytest.mark.parametrize(
    ("kind", "status", "code", "exit_code"),
    [
        (NotFound, 404, "not_found", 4),
        (Rejected, 422, "rejected", 5),
        (Unauthorized, 401, "unauthorized", 6),
        (Forbidden, 403, "forbidden", 6),
    ],
)
def test_a_status_of_its_own_comes_back_as_its_class(
    kind: type[ApiError], status: int, code: str, exit_code: int
) -> None:
    assert (kind.status, kind.code) == (status, code)
    back = error_for_status(status, "the master's words")
    assert type(back) is kind
    assert (back.status, back.message, back.exit_code) == (status, "the master's words",
                                                           exit_code)


@pytest.mark.parametrize("status", [400, 408, 409, 413, 500, 502, 507])
def test_any_other_status_comes_back_as_an_api_error_that_keeps_it(status: int) -> None:
    back = error_for_status(status, "no")
    assert type(back) is ApiError
    assert (back.status, back.exit_code) == (status, 1)


def test_errors_that_are_not_api_errors_have_their_status_for_the_master() -> None:
    assert (MgpuError.status, MgpuError.code) == (400, "error")
    assert (UsageError.status, UsageError.code, UsageError.exit_code) == (400, "bad_request", 2)
    assert (StoreError.status, StoreError.code) == (507, "store")
    assert ApiError("x").status == 400 and ApiError("x", 408).status == 408
    assert NotFound("x").status == 404 and Rejected("x", 422).status == 422


def test_the_master_answers_each_error_as_the_table_says(cluster: Cluster) -> None:
    bob = cluster.user_token("bob")
    too_big = {"jobs": [{"command": "true", "gpus": 99, "cwd": "/", "user": "bob"}]}
    asked = {
        NotFound: cluster.status_of("/api/v1/jobs/99999", token=cluster.token),
        Unauthorized: cluster.status_of("/api/v1/jobs"),
        Forbidden: cluster.status_of("/api/v1/tokens", token=bob),
        Rejected: cluster.status_of("/api/v1/jobs", too_big, token=bob),
        UsageError: cluster.status_of("/api/v1/jobs", data=b"{", token=bob),
    }
    for kind, (status, reply) in asked.items():
        assert (status, reply["code"]) == (kind.status, kind.code), kind.__name__
        back = error_from_reply(status, json.dumps(reply).encode())
        # What the client raises: the class itself, or an ApiError for a status that has
        # no class of its own on the client (a 400 is the master's verdict, not a usage
        # error of this command).
        assert type(back) is (kind if issubclass(kind, ApiError) else ApiError)
        assert (back.status, back.message) == (status, reply["error"])
