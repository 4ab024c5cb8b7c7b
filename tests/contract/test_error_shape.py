"""Every error response of the HTTP API has one shape: an OperationOutcome
with a machine-readable Salus code, the request id, and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Body
from fastapi.testclient import TestClient

from salus import errors
from salus.config import Settings
from salus.server import create_app
from salus.services import Services
from salus.storage.keys import FileKeyProvider
from tests.conftest import BACKENDS, backend_database, settings_for
from tests.unit.test_errors import FHIR_ISSUE_TYPES

SECRET = "Nguyen Van A 1950-01-01"


@pytest.fixture(scope="module", params=BACKENDS)
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir: Path = tmp_path_factory.mktemp("data")
    with backend_database(request.param, data_dir) as (url, schema):
        settings = settings_for(url, schema, data_dir, http_max_body_bytes=4096, jobs_enabled=False)
        FileKeyProvider.create(settings.key_path())
        services = Services.build(settings)
        try:
            with TestClient(
                _app_with_test_routes(settings, services), raise_server_exceptions=False
            ) as test_client:
                yield test_client
        finally:
            services.close()


def _app_with_test_routes(settings: Settings, services: Services) -> Any:
    app = create_app(settings, services)

    def raiser(cls: type[errors.SalusError]) -> Any:
        async def endpoint() -> None:
            raise cls()

        return endpoint

    for cls in errors.error_classes():
        app.api.add_api_route(f"/test/raise/{cls.__name__}", raiser(cls))

    async def crash() -> None:
        raise ValueError(SECRET)

    async def typed(count: int, when: str) -> dict[str, int]:
        return {"count": count}

    async def upload(payload: dict[str, Any] = Body(...)) -> dict[str, int]:  # noqa: B008
        return {"keys": len(payload)}

    app.api.add_api_route("/test/crash", crash)
    app.api.add_api_route("/test/typed", typed)
    app.api.add_api_route("/test/upload", upload, methods=["POST"])
    return app


def assert_outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    expected_type = (
        "application/fhir+json" if response.url.path.startswith("/fhir") else "application/json"
    )
    assert response.headers["content-type"].startswith(expected_type)
    body = response.json()
    assert set(body) == {"resourceType", "issue", "id"}
    assert body["resourceType"] == "OperationOutcome"
    assert body["id"] == response.headers["x-request-id"]
    assert body["issue"], "an OperationOutcome has at least one issue"
    for issue in body["issue"]:
        assert set(issue) <= {"severity", "code", "details", "diagnostics", "expression"}
        assert issue["severity"] in {"error", "fatal"}
        assert issue["code"] in FHIR_ISSUE_TYPES
        coding = issue["details"]["coding"]
        assert coding[0]["system"] == "urn:salus:error" and coding[0]["code"]
        assert isinstance(issue["diagnostics"], str) and issue["diagnostics"]
    assert SECRET not in response.text
    return body


@pytest.mark.parametrize("cls", errors.error_classes(), ids=lambda c: c.__name__)
def test_every_error_class(client: TestClient, cls: type[errors.SalusError]) -> None:
    body = assert_outcome(client.get(f"/test/raise/{cls.__name__}"), cls.http_status)
    assert body["issue"][0]["code"] == cls.issue_code
    assert body["issue"][0]["details"]["coding"][0]["code"] == cls.code


def test_unknown_route(client: TestClient) -> None:
    assert_outcome(client.get("/no/such/thing"), 404)


def test_wrong_method(client: TestClient) -> None:
    assert_outcome(client.delete("/health"), 405)


def test_unexpected_exception_reveals_nothing(client: TestClient) -> None:
    body = assert_outcome(client.get("/test/crash"), 500)
    assert body["issue"][0]["diagnostics"] == "An internal error occurred."


def test_validation_error_names_fields_not_values(client: TestClient) -> None:
    body = assert_outcome(client.get("/test/typed", params={"count": SECRET}), 400)
    assert "query.count" in body["issue"][0]["expression"]
    assert "query.when" in body["issue"][0]["expression"]


def test_malformed_json_body(client: TestClient) -> None:
    response = client.post(
        "/test/upload", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_outcome(response, 400)


def test_oversized_body_declared(client: TestClient) -> None:
    assert_outcome(client.post("/test/upload", content=b"x" * 5000), 413)


def test_oversized_body_streamed(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b'{"a": "' + b"x" * 1000 + b'"}'

    response = client.post(
        "/test/upload", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_outcome(response, 413)


def test_fhir_paths_answer_in_fhir_json(client: TestClient) -> None:
    # The FHIR API needs a token: its refusals are OperationOutcomes in FHIR JSON too.
    assert_outcome(client.get("/fhir/Patient/123"), 401)
    assert_outcome(client.post("/fhir", content=b"{}"), 401)


def test_not_ready_is_an_outcome(client: TestClient, tmp_path: Path) -> None:
    services: Services = client.app.services  # type: ignore[attr-defined]
    original = services.blobs.objects
    services.blobs.objects = type(original)(tmp_path / "gone")  # type: ignore[call-arg]
    (tmp_path / "gone" / ".tmp").rmdir()
    try:
        body = assert_outcome(client.get("/ready"), 503)
        assert [i["expression"] for i in body["issue"]] == [["blob_store"]]
    finally:
        services.blobs.objects = original


def test_request_id_is_echoed_when_safe(client: TestClient) -> None:
    response = client.get("/nope", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["id"] == "abc-123"
    forged = client.get("/nope", headers={"x-request-id": b"x\xe9<script>\r"})
    assert "<script>" not in forged.headers["x-request-id"]
    assert len(forged.headers["x-request-id"]) == 32
