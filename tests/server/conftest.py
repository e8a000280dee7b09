from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pipelines import CompositeEngine
from server.app import create_app
from server.settings import Settings
from tests.conftest import wait_ready

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """An app with one API key on the composite engine."""
    app = create_app(Settings(api_keys=[KEY], max_body_bytes=2_000_000, max_image_pixels=1_000_000, fetch_allow=["127.0.0.1"]), CompositeEngine())
    with TestClient(app, headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client)
        yield test_client
