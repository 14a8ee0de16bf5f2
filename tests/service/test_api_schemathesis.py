"""Property-based requests from the OpenAPI schema of a running server (Schemathesis): zero 5xx, ever.

Every operation gets generated paths, queries, headers and bodies (valid and invalid), with the API key so that
writes run too; a response with status ≥ 500 fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.service.conftest import API_KEY, LiveServer, make_settings, start_live_server

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def live_api(api_artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_live_server(make_settings(tmp_path_factory.mktemp("schemathesis"), model=api_artefact))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api_schema(live_api: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: a failure here is reproducible
)
def test_no_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers={"X-API-Key": API_KEY}, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
