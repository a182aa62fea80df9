"""A worker's roles (`GEODISPATCH_ROLES`, `geodispatch worker --roles`): what is accepted, in which
order, and which routes a stream worker without the `api` role serves."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings
from streams.views import routes


@pytest.mark.parametrize(
    ("given", "roles", "runs_streams"),
    [
        (None, ("sessions", "assignments", "api"), True),
        ("api", ("api",), False),
        (" api , assignments,sessions ", ("sessions", "assignments", "api"), True),
        ("assignments,sessions", ("sessions", "assignments"), True),
    ],
)
def test_roles_are_read_as_a_comma_list_in_a_fixed_order(given, roles, runs_streams):
    settings = Settings() if given is None else Settings(roles=given)
    assert settings.roles == roles
    assert settings.runs_streams is runs_streams


@pytest.mark.parametrize("given", ["", "sessions", "assignments,api", "api,dispatch"])
def test_roles_that_cannot_run_are_refused(given):
    with pytest.raises(ValidationError):
        Settings(roles=given)


def test_a_worker_without_the_api_role_serves_only_the_operations_routes():
    assert [path for path, _ in routes(serves_sessions=False)] == ["/health", "/stats", "/metrics"]
    assert [path for path, _ in routes(serves_sessions=True)][:2] == [
        "/driver-sessions/sessions/nearby",
        "/driver-sessions/sessions/{driver_id}",
    ]
