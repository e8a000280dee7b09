"""The Ray Serve application on a local Ray with two logical GPUs: two replicas, the same contract and health,
and requests routed by model set with Ray's model multiplexing.

There is no real GPU here: Ray hands each replica one logical GPU id, and SEGSWAP_DEVICES=cpu makes the
replica run on the CPU, as it would run on cuda:0 on a GPU node. The default set is composite; tiny
random-weight sd15, sdxl and flux2-klein sets are those routed by set, one at a time per replica.
"""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("diffusers")

from pipelines import CompositeEngine  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.api.live_server import free_port  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ray" / "serve_config.yaml"
KEY = "ray-test-key-0123456789"
ROUTED = ("sd15", "sdxl", "flux2-klein")
REPLICA_ENV = {
    "SEGSWAP_MODEL_SET": ",".join(("composite", *ROUTED)),
    "SEGSWAP_DEVICES": "cpu",
    "SEGSWAP_API_KEYS": KEY,
    "SEGSWAP_MAX_QUEUE": "4",
}
SET_HEADER = "serve_multiplexed_model_id"


@pytest.fixture(scope="module")
def replica_env(tmp_path_factory) -> dict[str, str]:
    from pipelines.models.tiny import make_tiny

    weights = tmp_path_factory.mktemp("ray-weights")
    make_tiny(weights, sets=ROUTED)
    return {**REPLICA_ENV, "SEGSWAP_WEIGHTS_DIR": str(weights)}


@pytest.fixture(scope="module")
def proxy_url(replica_env) -> Iterator[str]:
    """The app deployed as `serve deploy` would (builder, app-level env vars), two replicas holding one routed
    set each at most, behind Ray's proxy."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**replica_env, "RAY_AUTH_MODE": "disabled"}.items():
            env.setenv(name, value)  # the builder runs here and reads SEGSWAP_MAX_QUEUE, as in the app's runtime_env
        ray.init(
            address="local",
            num_cpus=4,
            num_gpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": replica_env},
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            from server.deployment.ray_serve import app

            serve.run(app({"min_replicas": 2, "max_sets_per_replica": 1}), name="segswap", route_prefix="/")
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
    from server.deployment.ray_serve import DEFAULT_MAX_SETS, PROBE_HEADROOM, app

    config = app({"max_replicas": 3})._bound_deployment._deployment_config
    assert config.max_ongoing_requests == 4 + 1 + PROBE_HEADROOM  # the app's queue, its worker, probes
    autoscaling = config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (1, 3, 2)
    assert app({})._bound_deployment._deployment_config.autoscaling_config.max_replicas == 2  # the cluster's GPUs
    assert app({})._bound_deployment.init_args == (DEFAULT_MAX_SETS,)  # to each replica's __init__
    assert app({"max_sets_per_replica": 3})._bound_deployment.init_args == (3,)


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
    assert ready.json()["model_sets"]["composite"]["state"] == "loaded"
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

    no_weights = {"SEGSWAP_ENGINE": "diffusion", "SEGSWAP_MODEL_SET": "sd15", "SEGSWAP_WEIGHTS_DIR": str(tmp_path)}
    broken_env = {**REPLICA_ENV, **no_weights}
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


def swap_on(proxy_url: str, body: dict, model_set: str) -> httpx.Response:
    headers = {"x-api-key": KEY, SET_HEADER: model_set}
    return httpx.post(f"{proxy_url}/v1/seg-swap", json=body, headers=headers, timeout=120)


def held_by(proxy_url: str, model_set: str) -> tuple[str, dict[str, str]]:
    """The replica Ray routes `model_set` to, and the state of each of its sets."""
    listed = httpx.get(f"{proxy_url}/v1/models", headers={"x-api-key": KEY, SET_HEADER: model_set}, timeout=120)
    return listed.headers["x-segswap-replica"], {card["id"]: card["state"] for card in listed.json()["data"]}


def test_a_set_runs_on_the_replica_holding_it_and_another_set_loads_on_the_other(proxy_url, body):
    first = swap_on(proxy_url, body, "sd15")
    assert first.status_code == 200, first.text
    assert first.headers["x-segswap-engine"] == "diffusion/sd15"
    holder = first.headers["x-segswap-replica"]
    for _ in range(4):
        again = swap_on(proxy_url, body, "sd15")
        assert (again.headers["x-segswap-replica"], again.content) == (holder, first.content)
    other = swap_on(proxy_url, body, "sdxl")  # no replica holds it: Ray sends it to the one holding fewest sets
    assert other.status_code == 200 and other.headers["x-segswap-engine"] == "diffusion/sdxl"
    assert other.headers["x-segswap-replica"] != holder
    assert held_by(proxy_url, "sd15") == (
        holder,
        {"composite": "loaded", "sd15": "loaded", "sdxl": "unloaded", "flux2-klein": "unloaded"},
    )
    replica, states = held_by(proxy_url, "sdxl")
    assert replica == other.headers["x-segswap-replica"]
    assert states == {"composite": "loaded", "sd15": "unloaded", "sdxl": "loaded", "flux2-klein": "unloaded"}


def test_with_one_set_per_replica_the_next_set_unloads_the_least_recently_used(proxy_url, body):
    holders = {name: swap_on(proxy_url, body, name).headers["x-segswap-replica"] for name in ("sd15", "sdxl")}
    assert len(set(holders.values())) == 2
    third = swap_on(proxy_url, body, "flux2-klein")  # each replica holds one set: it evicts one of them
    assert third.status_code == 200 and third.headers["x-segswap-engine"] == "diffusion/flux2-klein"
    replica = third.headers["x-segswap-replica"]
    (evicted,) = [name for name, holder in holders.items() if holder == replica]
    (kept,) = [name for name in holders if name != evicted]
    assert held_by(proxy_url, "flux2-klein") == (
        replica,
        {"composite": "loaded", evicted: "unloaded", kept: "unloaded", "flux2-klein": "loaded"},
    )
    assert held_by(proxy_url, kept)[1][kept] == "loaded"  # the other replica kept its set
    back = swap_on(proxy_url, body, evicted)
    assert back.status_code == 200 and back.headers["x-segswap-engine"] == f"diffusion/{evicted}"


def test_a_held_set_is_unloaded_when_ray_evicts_it_never_when_it_is_collected():
    from server.deployment.multiplexing import HeldSet

    unloaded = []
    loader = SimpleNamespace(unload=unloaded.append)
    collected, evicted = HeldSet(loader, SimpleNamespace(name="sd15")), HeldSet(loader, SimpleNamespace(name="sdxl"))
    assert hasattr(evicted, "__del__")  # Ray's eviction calls it only then
    evicted.__del__()
    evicted.__del__ = lambda _: None  # as Ray's eviction does next
    del collected, evicted
    gc.collect()
    assert unloaded == ["sdxl"]


def test_the_header_decides_the_set_and_a_body_naming_another_is_a_400(proxy_url, body):
    routed = httpx.post(
        f"{proxy_url}/v1/seg-swap",
        json={**body, "model_set": "sd15"},
        headers={"x-api-key": KEY, SET_HEADER: "sd15"},
        timeout=120,
    )
    assert routed.status_code == 200 and routed.headers["x-segswap-engine"] == "diffusion/sd15"
    refused = swap_on(proxy_url, {**body, "model_set": "sdxl"}, "sd15")
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "model_set 'sdxl' and the serve_multiplexed_model_id header 'sd15' disagree; "
        "send the same set in both, or only the header"
    )
    unknown = swap_on(proxy_url, body, "nope")
    assert unknown.status_code == 400 and "model set 'nope' is not served here" in unknown.json()["error"]
    plain = httpx.post(f"{proxy_url}/v1/seg-swap", json=body, headers={"x-api-key": KEY}, timeout=60)
    assert plain.status_code == 200 and plain.headers["x-segswap-engine"] == "composite"  # no header: the default


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
    assert deployment.init_args == (application.args["max_sets_per_replica"],)
    (override,) = application.deployments
    assert override.name == deployment.name
    assert override.ray_actor_options.num_gpus == 1
    assert deployment._deployment_config.max_ongoing_requests > int(env["SEGSWAP_MAX_QUEUE"]) + 1
    autoscaling = override.autoscaling_config
    assert autoscaling["min_replicas"] == 1 and autoscaling["target_ongoing_requests"] <= int(env["SEGSWAP_MAX_QUEUE"])
