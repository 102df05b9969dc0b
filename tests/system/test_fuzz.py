"""Schemathesis over the app's own OpenAPI schema: every operation, with an admin token and none.

Each operation gets a few generated requests (valid and invalid ones) against the real app
in-process, on each storage backend. Whatever a request holds, the answer is never a 5xx, and
an answer the schema documents has the documented shape (e.g. every 422 a list of errors).
The number of examples is bounded so that the whole run stays well within CI's time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr

from homepot.auth.models import Role
from homepot.config import AnalyticsSettings, AuthSettings, Settings
from homepot.main import create_app
from tests.conftest import BACKENDS, TEST_SECRET
from tests.helpers import create_user

# Generated requests per operation and backend (each sent without a token and as admin).
# A deeper run: HOMEPOT_TEST_FUZZ_EXAMPLES=200 HOMEPOT_TEST_FUZZ_COVERAGE=1 (the latter adds
# schemathesis' boundary cases, which take minutes).
EXAMPLES_PER_OPERATION = int(os.environ.get("HOMEPOT_TEST_FUZZ_EXAMPLES", "6"))
PHASES = (
    [Phase.explicit, Phase.generate]
    if os.environ.get("HOMEPOT_TEST_FUZZ_COVERAGE")
    else [Phase.generate]
)

# With a secret key: otherwise every process that collects this module (each xdist worker)
# writes var/token-secret into the working directory, the repository.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(auth=AuthSettings(secret_key=TEST_SECRET))).openapi()
)

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.content_type_conformance,
]


class FuzzTarget:
    """The app with its lifespan running on an event loop of its own, for synchronous tests."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient, admin_token: str):
        self.portal = portal
        self.client = client
        self.admin_token = admin_token

    def send(self, case: Any, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
        request.pop("cookies", None)
        data = request.pop("data", None)
        if isinstance(data, bytes | str):
            request["content"] = data
        elif data is not None:
            request["data"] = data
        response: httpx.Response = self.portal.call(
            functools.partial(self.client.request, **request)
        )
        return response


@pytest.fixture(scope="module", params=BACKENDS)
def target(
    request: pytest.FixtureRequest,
    _migrated_urls: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FuzzTarget]:
    spool: Path = tmp_path_factory.mktemp("fuzz-spool")
    app = create_app(
        Settings(
            database_url=_migrated_urls[request.param],
            auth=AuthSettings(secret_key=TEST_SECRET),
            analytics=AnalyticsSettings(spool_dir=spool, flush_interval_seconds=0.05),
            export_key=SecretStr("fuzz-export-key-0123456789abcdef"),
        )
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def lifespan() -> LifespanManager:
        return LifespanManager(app)  # made on the portal's loop, where it runs

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(portal.call(lifespan)),
    ):
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        admin = portal.call(functools.partial(create_user, app, role=Role.admin))
        answer = portal.call(
            functools.partial(
                client.post,
                "/api/v1/auth/token",
                data={"username": admin["email"], "password": admin["password"]},
            )
        )
        assert answer.status_code == 200, answer.text
        try:
            yield FuzzTarget(portal, client, answer.json()["access_token"])
        finally:
            portal.call(client.aclose)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    # By default generated examples only: schemathesis' exhaustive boundary ("coverage")
    # cases ride on the explicit phase and take minutes; tests/system/test_input_limits.py
    # covers those boundaries directly.
    phases=PHASES,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_5xx_or_off_schema(case: Any, target: FuzzTarget) -> None:
    # Each generated request is sent twice: without a token, then with the admin's.
    for token in (None, target.admin_token):
        response = target.send(case, token)
        case.validate_response(response, checks=CHECKS)
