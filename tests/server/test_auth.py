"""API keys, and the rule that a server without keys only answers on loopback."""

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from pipelines import CompositeEngine
from server.access.keys import identify
from server.api.app import create_app
from server.errors import Unauthorized
from server.settings import Settings
from tests.conftest import wait_ready
from tests.server.conftest import KEY


@pytest.mark.parametrize(
    "given,expected",
    [
        ("", "missing API key: send it in the x-api-key header (or Authorization: Bearer <key>)"),
        ("wrong", "invalid API key"),
        (KEY[:-1], "invalid API key"),
    ],
)
def test_missing_or_wrong_key_is_401(client, body, given, expected):
    response = client.post("/v1/seg-swap", json=body, headers={"x-api-key": given})
    assert response.status_code == 401 and response.json() == {"error": expected}


def test_no_key_header_at_all_is_401(client, body):
    response = TestClient(client.app).post("/v1/seg-swap", json=body)  # no lifespan: the module's app stays as is
    assert response.status_code == 401 and "missing API key" in response.json()["error"]


def test_key_in_the_query_string_is_refused(client, body):
    response = client.post(f"/v1/seg-swap?api_key={KEY}", json=body)
    assert response.status_code == 401 and "header" in response.json()["error"]


def test_any_configured_key_works_and_others_do_not():
    keys = ["alpha-key", "beta-key"]
    assert identify("beta-key", keys, None).key_id != identify("alpha-key", keys, None).key_id
    for wrong in ("gamma-key", "", "alpha-key "):
        with pytest.raises(Unauthorized, match="invalid API key"):
            identify(wrong, keys, None)


def test_keys_come_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("SEGSWAP_API_KEYS", " one , two,,three ")
    assert Settings().api_keys == ["one", "two", "three"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_no_keys_on_a_public_address_refuses_to_start(host, monkeypatch):
    monkeypatch.delenv("SEGSWAP_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match="without API keys"):
        Settings(host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_no_keys_on_loopback_is_allowed(host, monkeypatch):
    monkeypatch.delenv("SEGSWAP_API_KEYS", raising=False)
    assert not Settings(host=host).auth_required


def test_keyless_server_answers_loopback_clients_only(body, monkeypatch):
    monkeypatch.delenv("SEGSWAP_API_KEYS", raising=False)
    app = create_app(Settings(), CompositeEngine())
    with TestClient(app, base_url="http://127.0.0.1:8000") as local:
        wait_ready(local)
        assert local.post("/v1/seg-swap", json=body).status_code == 200
    # The same app reached on a non-loopback local address (e.g. started with uvicorn --host 0.0.0.0).
    with TestClient(app, base_url="http://10.0.0.5:8000") as remote:
        response = remote.post("/v1/seg-swap", json=body)
    assert response.status_code == 401 and "loopback" in response.json()["error"]
