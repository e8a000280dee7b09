"""The playground page as served (no browser): routes, headers, packaging, and controls that match the contract."""

from __future__ import annotations

import re
import tomllib
import typing
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines import IMAGE_FIELDS, CompositeEngine
from server.api.app import create_app
from server.api.playground import STATIC_DIR, mount_playground
from server.contract import SwapRequest
from server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# The region's selectors are the Select tool's (sent to /v1/seg-mask), not form controls.
NOT_CONTROLS = (*IMAGE_FIELDS, "base64", "box", "points", "text")


class Controls(HTMLParser):
    """The form controls of the page by name, with their attributes; a select's options as a list."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in ("input", "textarea", "select") and attributes.get("name") and attributes.get("type") != "radio":
            self.controls[attributes["name"]] = {"tag": tag, **attributes, "options": []}
            self._select = attributes["name"] if tag == "select" else None
        elif tag == "option" and self._select:
            self.controls[self._select]["options"].append(attributes)


@pytest.fixture(scope="module")
def page_client(tmp_path_factory):
    app = create_app(Settings(api_keys=["k"], jobs_dir=tmp_path_factory.mktemp("jobs")), CompositeEngine())
    mount_playground(app)
    mount_playground(app)  # a second call is harmless (the app factory may already have mounted it)
    with TestClient(app) as client:
        yield client


def page_controls() -> dict[str, dict]:
    parser = Controls()
    parser.feed((STATIC_DIR / "index.html").read_text())
    return parser.controls


def bounds(name: str) -> tuple[float | None, float | None]:
    low = high = None
    for rule in SwapRequest.model_fields[name].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    return low, high


def test_the_page_and_its_assets_are_served_without_auth(page_client):
    page = page_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset, media_type in (("app.js", "javascript"), ("style.css", "text/css")):
        response = page_client.get(f"/playground/{asset}")
        assert response.status_code == 200 and media_type in response.headers["content-type"], asset
    assert 'src="playground/app.js"' in page.text and 'href="playground/style.css"' in page.text


def test_unknown_assets_are_json_404s_and_nothing_escapes_the_folder(page_client):
    for path in ("/playground/nope.js", "/playground/../contract.py", "/playground/%2e%2e/contract.py"):
        response = page_client.get(path)
        assert response.status_code == 404 and "error" in response.json(), path


def test_the_playground_is_not_in_the_api_schema(page_client):
    paths = page_client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/playground") for path in paths)
    assert "/v1/seg-swap" in paths


def test_every_contract_parameter_has_a_control_with_its_range_and_default():
    controls = page_controls()
    for name, field in SwapRequest.model_fields.items():
        if name in NOT_CONTROLS:
            continue
        assert name in controls, f"no control for {name}"
        control = controls[name]
        if name in ("model_set", "lora"):  # filled from GET /v1/models: the page holds only "none sent"
            assert control["tag"] == "select" and [(o["value"], "selected" in o) for o in control["options"]] == [
                ("", True)
            ]
            assert 'MODELS_PATH = "v1/models"' in (STATIC_DIR / "app.js").read_text()
        elif control["tag"] == "select":
            assert [option["value"] for option in control["options"]] == list(typing.get_args(field.annotation)), name
            selected = [option["value"] for option in control["options"] if "selected" in option]
            assert selected == [field.default], name
        elif control["tag"] == "textarea":
            assert field.default == "" and int(control["maxlength"]) == field.metadata[0].max_length, name
        else:
            low, high = bounds(name)
            assert (float(control["min"]), float(control["max"])) == (low, high), name
            assert float(control["value"]) == field.default, name
            assert control.get("step") in (("1",) if field.annotation is int else ("0.05", "0.5")), name
    assert set(controls) - set(SwapRequest.model_fields) == set(), "a control the contract does not have"


def test_the_page_loads_nothing_from_elsewhere():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), path.name
        assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", text), path.name
        assert 'fetch("http' not in text and "fetch('http" not in text, path.name


def test_the_static_files_are_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "static/**/*" in pyproject["tool"]["setuptools"]["package-data"]["server.api"]
    assert {path.name for path in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "style.css"}
