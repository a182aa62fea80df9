"""A worker's roles (`GEODISPATCH_ROLES`, `geodispatch worker --roles`): what is accepted, in which
order, and which routes a stream worker without the `api` role serves."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infra.settings import Settings
from streams.processes import shape
from streams.views import routes


@pytest.mark.parametrize(
    ("given", "roles", "runs_streams"),
    [
        (None, ("sessions", "assignments", "api"), True),
        ("api", ("api",), False),
        (" api , assignments,sessions ", ("sessions", "assignments", "api"), True),
        ("assignments,sessions", ("sessions", "assignments"), True),
        ("sessions", ("sessions",), True),
        ("api,assignments", ("assignments", "api"), True),
    ],
)
def test_roles_are_read_as_a_comma_list_in_a_fixed_order(given, roles, runs_streams):
    settings = Settings() if given is None else Settings(roles=given)
    assert settings.roles == roles
    assert settings.runs_streams is runs_streams


@pytest.mark.parametrize("given", ["", " , ", "api,dispatch"])
def test_roles_that_cannot_run_are_refused(given):
    with pytest.raises(ValidationError):
        Settings(roles=given)


@pytest.mark.parametrize(
    ("roles", "group"),
    [
        ("sessions,assignments,api", "p.geodispatch"),
        ("sessions", "p.geodispatch"),
        ("sessions,api", "p.geodispatch"),
        ("assignments", "p.geodispatch-assignments"),
        ("assignments,api", "p.geodispatch-assignments"),
    ],
)
def test_the_assignments_role_alone_is_a_consumer_group_of_its_own(roles, group):
    settings = Settings(roles=roles, topic_prefix="p.")
    assert settings.faust_app_id == group
    assert settings.store_dir.name == group


def test_a_worker_without_the_api_role_serves_only_the_operations_routes():
    assert [path for path, _ in routes(serves_sessions=False)] == ["/health", "/health/live", "/health/ready",
                                                                   "/stats", "/metrics"]
    assert [path for path, _ in routes(serves_sessions=True)][:2] == [
        "/driver-sessions/sessions/nearby",
        "/driver-sessions/sessions/{driver_id}",
    ]


def test_make_runs_shape_puts_pings_behind_requests_for_the_cpu():
    processes = {process.roles: process for process in shape("roles", 6066)}
    assert processes["sessions"].niceness > 0
    assert processes["assignments"].niceness == 0 and processes["api"].niceness == 0
    assert [process.niceness for process in shape("one", 6066)] == [0]
