"""The Ray Serve application on a local Ray with two logical GPUs: two replicas, the same contract and health.

There is no real GPU here: Ray hands each replica one logical GPU id, and SEGSWAP_DEVICES=cpu with
the composite engine makes the replica run on the CPU, as it would run on cuda:0 on a GPU node.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from pipelines import CompositeEngine  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ray" / "serve_config.yaml"
KEY = "ray-test-key-0123456789"
REPLICA_ENV = {
    "SEGSWAP_ENGINE": "composite",
    "SEGSWAP_DEVICES": "cpu",
    "SEGSWAP_API_KEYS": KEY,
    "SEGSWAP_MAX_QUEUE": "4",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    """The app deployed as `serve deploy` would (builder, app-level env vars), two replicas, behind Ray's proxy."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**REPLICA_ENV, "RAY_AUTH_MODE": "disabled"}.items():
            env.setenv(name, value)  # the builder runs here and reads SEGSWAP_MAX_QUEUE, as in the app's runtime_env
        ray.init(
            address="local",
            num_cpus=4,
            num_gpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": REPLICA_ENV},
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            from server.deployment.ray_serve import app

            serve.run(app({"min_replicas": 2}), name="segswap", route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()


def test_two_replicas_running_one_per_logical_gpu(proxy_url):
    status = serve.status().applications["segswap"]
    deployment = status.deployments["segswap"]
    assert status.status == "RUNNING" and deployment.replica_states == {"RUNNING": 2}
    assert ray.cluster_resources()["GPU"] == 2 and ray.available_resources().get("GPU", 0) == 0  # each holds one


def test_deployment_options_leave_backpressure_to_the_app(proxy_url):
    from server.deployment.ray_serve import PROBE_HEADROOM, app

    config = app({"max_replicas": 3})._bound_deployment._deployment_config
    assert config.max_ongoing_requests == 4 + 1 + PROBE_HEADROOM  # the app's queue, its worker, probes
    autoscaling = config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 3, 2)
    assert app({})._bound_deployment._deployment_config.autoscaling_config.max_replicas == 2  # the cluster's GPUs


def test_swap_through_the_proxy_is_a_png_of_the_main_image_size(proxy_url, body, scene):
    response = httpx.post(
        f"{proxy_url}/v1/seg-swap", json=body, headers={"x-api-key": KEY, "x-request-id": "ray-42"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["x-segswap-engine"] == "composite"
    assert response.headers["x-seed-value"] == "7"
    assert response.headers.get_list("x-request-id") == ["ray-42"]  # one header, the client's id
    assert Image.open(io.BytesIO(response.content)).size == scene.size


def test_health_through_the_proxy(proxy_url):
    assert httpx.get(f"{proxy_url}/health/live").json() == {"status": "live"}
    ready = httpx.get(f"{proxy_url}/health/ready")
    assert ready.status_code == 200
    expected = {
        "status": "ready",
        "engine": "composite",
        "workers": 1,
        "queue_depth": 0,
        "default_model_set": "composite",
    }
    assert ready.json().items() >= expected.items()
    assert "segswap_queue_depth" in httpx.get(f"{proxy_url}/metrics").text


def test_errors_through_the_proxy_are_those_of_the_plain_app(proxy_url, body):
    plain = create_app(Settings(api_keys=[KEY]), CompositeEngine())
    cases = [
        ({**body, "steps": 5}, {"x-api-key": KEY}),
        ({"main_image": "not base64!"}, {"x-api-key": KEY}),
        (body, {}),
    ]
    with TestClient(plain) as client:
        wait_ready(client)
        for payload, headers in cases:
            expected = client.post("/v1/seg-swap", json=payload, headers=headers)
            got = httpx.post(f"{proxy_url}/v1/seg-swap", json=payload, headers=headers, timeout=30)
            assert expected.status_code in (400, 401)
            assert (got.status_code, got.json()) == (expected.status_code, expected.json())
            assert got.headers["content-type"] == "application/json"


def test_a_replica_whose_engine_fails_to_load_never_takes_traffic(proxy_url, tmp_path):
    from server.deployment.ray_serve import SegSwapReplica

    broken_env = {**REPLICA_ENV, "SEGSWAP_ENGINE": "diffusion", "SEGSWAP_WEIGHTS_DIR": str(tmp_path)}  # no model set
    broken = SegSwapReplica.options(
        name="broken", ray_actor_options={"num_gpus": 0, "runtime_env": {"env_vars": broken_env}}
    )
    with pytest.raises(RuntimeError, match="Deploying application broken failed"):
        serve.run(broken.bind(), name="broken", route_prefix="/broken")
    status = serve.status().applications["broken"]
    assert status.status == "DEPLOY_FAILED"
    assert "the engine failed to load" in status.deployments["broken"].message  # Ray retried, then gave up
    assert httpx.get(f"{proxy_url}/health/ready").status_code == 200  # the other application is untouched
    serve.delete("broken")


def test_the_serve_config_is_valid_and_names_this_app(monkeypatch):
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from server.deployment.ray_serve import build_app

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    env = application.runtime_env["env_vars"]
    assert {"SEGSWAP_ENGINE", "SEGSWAP_WEIGHTS_DIR", "SEGSWAP_API_KEYS"} <= set(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module, _, name = application.import_path.partition(":")
    assert getattr(importlib.import_module(module), name) is build_app
    built = build_app(application.args)
    deployment = built._bound_deployment
    (override,) = application.deployments
    assert override.name == deployment.name
    assert override.ray_actor_options.num_gpus == 1
    assert deployment._deployment_config.max_ongoing_requests > int(env["SEGSWAP_MAX_QUEUE"]) + 1
    autoscaling = override.autoscaling_config
    assert autoscaling["min_replicas"] == 1 and autoscaling["target_ongoing_requests"] <= int(env["SEGSWAP_MAX_QUEUE"])
