"""Model sets loaded and unloaded while the server runs: the admin routes and their permissions, what a set's
requests get while it is unloaded, its memory handed back, lazy loading with least-recently-used unloading
under a budget, a failed runtime load, and `segswap models`."""

from __future__ import annotations

import gc
import shutil
import threading
import time
import weakref

import pytest
from fastapi.testclient import TestClient

pytest.importorskip("diffusers")

from pipelines import find_model_set  # noqa: E402
from pipelines.models.memory import dtype_bytes, estimate  # noqa: E402
from server.access.keys import add_key  # noqa: E402
from server.api.app import create_app  # noqa: E402
from server.api.live_server import live_server  # noqa: E402
from server.cli.main import main  # noqa: E402
from server.errors import Unavailable  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.conftest import wait_ready  # noqa: E402

OPERATOR = "operator-key"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A key file with a client key (every family but admin) and an admin key, besides the operator's env key."""
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    return path, add_key(path, "client", None, ()), add_key(path, "ops", None, ("admin",))


def served_app(weights, keys, **extra):
    keys_file, _, _ = keys
    settings = Settings(api_keys=[OPERATOR], keys_file=keys_file, weights_dir=weights, **extra)
    return TestClient(create_app(settings), headers={"x-api-key": OPERATOR})


@pytest.fixture(scope="module")
def client(tiny_weights, keys, tmp_path_factory):
    jobs = tmp_path_factory.mktemp("jobs")
    with served_app(tiny_weights, keys, model_set="sd15,composite", jobs_dir=jobs) as test_client:
        wait_ready(test_client, timeout_s=300)
        yield test_client


def swap(client, body, model_set: str):
    return client.post("/v1/seg-swap", json={**body, "model_set": model_set})


def card(client, name: str) -> dict:
    return client.get(f"/v1/models/{name}").json()


def load_and_wait(client, name: str, headers=None) -> dict:
    response = client.post(f"/v1/models/{name}/load", headers=headers)
    assert response.status_code in (200, 202), response.text
    for _ in range(3000):
        if (found := card(client, name))["state"] != "loading":
            return found
        time.sleep(0.05)
    raise TimeoutError(name)


def test_unloading_a_set_answers_503_for_it_while_the_other_serves_and_loading_it_restores_it(client, body):
    before = swap(client, body, "sd15")
    assert before.status_code == 200
    engine = weakref.ref(client.app.state.sets.get("sd15").engine)
    unet = weakref.ref(engine().pipe.unet)

    unloaded = client.post("/v1/models/sd15/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["model"]["state"] == "unloaded" and not unloaded.json()["model"]["loaded"]
    assert set(unloaded.json()["held_before"]) == {"cpu"}
    gc.collect()
    assert engine() is None and unet() is None  # nothing holds the pipeline: its memory is the allocator's again

    refused = swap(client, body, "sd15")
    assert refused.status_code == 503 and "POST /v1/models/sd15/load" in refused.json()["error"]
    with pytest.raises(Unavailable, match="was unloaded"):  # a request that picked the set just before the unload
        client.app.state.sets.get("sd15").work.check_capacity()
    assert client.post("/v2/seg-swap", json={**body, "model_set": "sd15"}).status_code == 503
    assert swap(client, body, "composite").status_code == 200
    readiness = client.get("/health/ready")  # sd15 is the default: requests that name no set are refused
    assert readiness.status_code == 503 and readiness.json()["model_sets"]["sd15"]["state"] == "unloaded"
    assert readiness.json()["error"].startswith("the default model set 'sd15' is not loaded")
    assert client.get("/health").status_code == 503

    assert load_and_wait(client, "sd15")["state"] == "loaded"
    assert client.get("/health/ready").status_code == 200 and client.get("/health").status_code == 200
    again = swap(client, body, "sd15")
    assert again.status_code == 200 and again.content == before.content
    metrics = client.get("/metrics").text
    assert 'segswap_model_set_unloads_total{model_set="sd15"} 1.0' in metrics
    assert 'segswap_model_set_loads_total{model_set="sd15"} 1.0' in metrics


def test_unload_waits_for_the_running_job(client, body):
    answers = {}

    def slow_swap():
        answers["swap"] = swap(client, {**body, "steps": 60}, "sd15")

    thread = threading.Thread(target=slow_swap)
    thread.start()
    work = client.app.state.sets.get("sd15").work
    while not work.in_flight:
        time.sleep(0.005)
    unloaded = client.post("/v1/models/sd15/unload")
    running_then = work.in_flight  # the job's image is made (its response may still be on its way)
    thread.join()
    assert running_then == 0 and unloaded.status_code == 200
    assert answers["swap"].status_code == 200
    assert load_and_wait(client, "sd15")["state"] == "loaded"


def wait_status(client, job_id: str, until: tuple[str, ...], timeout_s: float = 120) -> str:
    end = time.monotonic() + timeout_s
    while (status := client.get(f"/v2/requests/{job_id}/status").json()["status"]) not in until:
        assert time.monotonic() < end, status
        time.sleep(0.05)
    return status


def test_a_stored_v2_job_for_an_unloaded_set_waits_queued_until_it_loads_again(client, body):
    """As after a restart, or from another replica sharing the store: the job is neither failed nor lost."""
    model = client.post("/v2/seg-swap", json={**body, "model_set": "composite"}).json()["request_id"]
    assert wait_status(client, model, ("COMPLETED",)) == "COMPLETED"
    store = client.app.state.jobs.store
    params = store.get(model).params | {"model_set": "sd15"}
    assert client.post("/v1/models/sd15/unload").status_code == 200
    job = store.create(store.get(model).key_id, params, store.load_inputs(model), 3600).id
    client.app.state.jobs.wake()
    time.sleep(2.5)  # the dispatcher has been round at least twice
    assert client.get(f"/v2/requests/{job}/status").json()["status"] == "QUEUED"
    assert load_and_wait(client, "sd15")["state"] == "loaded"
    assert wait_status(client, job, ("COMPLETED", "FAILED")) == "COMPLETED"


@pytest.mark.parametrize(
    ("name", "status", "says"),
    [("nope", 404, "no model set named 'nope'"), ("flux2-klein", 409, "segswap weights download flux2-klein")],
)
def test_loading_an_unknown_or_missing_set_says_why(client, name, status, says):
    response = client.post(f"/v1/models/{name}/load")
    assert response.status_code == status and says in response.json()["error"]


def test_only_admin_keys_load_and_unload_but_every_key_lists(client, keys):
    _, client_key, admin_key = keys
    for path in ("/v1/models/composite/unload", "/v1/models/composite/load"):
        refused = client.post(path, headers={"x-api-key": client_key})
        assert refused.status_code == 403 and "not allowed" in refused.json()["error"]
    assert client.get("/v1/models", headers={"x-api-key": client_key}).status_code == 200
    assert client.post("/v1/models/composite/unload", headers={"x-api-key": admin_key}).status_code == 200
    assert load_and_wait(client, "composite", {"x-api-key": admin_key})["state"] == "loaded"


def test_a_set_loaded_at_runtime_that_was_not_named_at_start(client, body):
    assert load_and_wait(client, "sdxl")["state"] == "loaded"
    response = swap(client, body, "sdxl")
    assert response.status_code == 200 and response.headers["x-segswap-engine"] == "diffusion/sdxl"
    assert client.post("/v1/models/sdxl/unload").status_code == 200


def test_a_runtime_load_that_fails_leaves_the_others_serving(tiny_weights, keys, body, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights / "sd15", weights / "sd15")
    broken = next((weights / "sd15").rglob("unet/*.safetensors"))
    broken.write_bytes(broken.read_bytes()[:100])  # present, so installed; unreadable, so its load fails
    with served_app(weights, keys, model_set="composite", jobs_dir=tmp_path / "jobs") as client:
        wait_ready(client)
        failed = load_and_wait(client, "sd15")
        assert failed["state"] == "failed" and "weights could not be loaded" in failed["reason"]
        refused = swap(client, body, "sd15")
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]
        assert swap(client, body, "composite").status_code == 200
        assert client.get("/health/ready").status_code == 200


def test_a_set_that_failed_to_load_lazily_is_not_loaded_again_by_each_request(
    tiny_weights, keys, body, tmp_path, caplog
):
    """Else any key could make the server read a broken set from disk on every request."""
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights / "sd15", weights / "sd15")
    broken = next((weights / "sd15").rglob("unet/*.safetensors"))
    broken.write_bytes(broken.read_bytes()[:100])
    with served_app(weights, keys, model_set="composite,sd15", lazy_load=True, jobs_dir=tmp_path / "jobs") as client:
        wait_ready(client)
        with caplog.at_level("ERROR", logger="segswap"):
            answers = [swap(client, body, "sd15") for _ in range(3)]
        assert all(answer.status_code == 503 for answer in answers)
        assert all("failed to load" in answer.json()["error"] for answer in answers)
        assert sum("model set sd15 failed to load" in record.getMessage() for record in caplog.records) == 1
        assert card(client, "sd15")["state"] == "failed"


def set_bytes(weights, name: str) -> int:
    return estimate(find_model_set(weights, name, "plus"), dtype_bytes("cpu", None)).total


def one_diffusion_set_at_a_time(weights, keys, tmp_path) -> TestClient:
    """Lazy loading of composite, sd15 and sdxl under a budget that holds only one of the two diffusion sets."""
    sd15, sdxl = set_bytes(weights, "sd15"), set_bytes(weights, "sdxl")
    budget = max(sd15, sdxl) + min(sd15, sdxl) // 2
    return served_app(
        weights, keys, model_set="composite,sd15,sdxl", lazy_load=True, memory_budget_bytes=budget,
        jobs_dir=tmp_path / "jobs",
    )  # fmt: skip


def test_lazy_loading_loads_on_the_first_request_and_unloads_the_least_recently_used_to_make_room(
    tiny_weights, keys, body, tmp_path
):
    with one_diffusion_set_at_a_time(tiny_weights, keys, tmp_path) as client:
        wait_ready(client)
        states = {card["id"]: card["state"] for card in client.get("/v1/models").json()["data"]}
        assert states == {"composite": "loaded", "sd15": "unloaded", "sdxl": "unloaded"}
        first = swap(client, body, "sd15")
        assert first.status_code == 200 and first.headers["x-segswap-engine"] == "diffusion/sd15"
        assert swap(client, body, "sdxl").status_code == 200
        states = {card["id"]: card["state"] for card in client.get("/v1/models").json()["data"]}
        assert states == {"composite": "loaded", "sd15": "unloaded", "sdxl": "loaded"}
        assert swap(client, body, "sd15").content == first.content  # and back: sdxl makes room this time
        assert card(client, "sdxl")["state"] == "unloaded"


def test_a_v2_job_whose_set_could_not_make_room_runs_once_the_other_set_is_idle(tiny_weights, keys, body, tmp_path):
    """Lazy loading: a stored job met its set unloaded while another set was busy (so not unloaded to make room
    for it); it must not wait queued for good once that set is idle."""
    with one_diffusion_set_at_a_time(tiny_weights, keys, tmp_path) as client:
        wait_ready(client)
        jobs = client.app.state.jobs
        model = client.post("/v2/seg-swap", json={**body, "model_set": "composite"}).json()["request_id"]
        assert wait_status(client, model, ("COMPLETED",)) == "COMPLETED"
        assert swap(client, body, "sdxl").status_code == 200
        engine, release, entered = client.app.state.sets.get("sdxl").engine, threading.Event(), threading.Event()
        generate = engine.generate

        def busy(*args, **kwargs):  # sdxl's next request holds it until released
            entered.set()
            release.wait(30)
            return generate(*args, **kwargs)

        engine.generate = busy
        thread = threading.Thread(target=lambda: swap(client, body, "sdxl"))
        thread.start()
        assert entered.wait(30)  # sdxl is busy now: the sd15 job cannot make room by unloading it
        params = jobs.store.get(model).params | {"model_set": "sd15"}
        job = jobs.store.create(jobs.store.get(model).key_id, params, jobs.store.load_inputs(model), 3600).id
        jobs.wake()
        end = time.monotonic() + 10
        while job not in jobs.parked:  # it met sdxl busy
            assert time.monotonic() < end
            time.sleep(0.01)
        release.set()
        thread.join()
        assert wait_status(client, job, ("COMPLETED", "FAILED"), timeout_s=30) == "COMPLETED"
        assert card(client, "sdxl")["state"] == "unloaded"


def test_a_set_too_large_for_the_budget_is_refused_in_one_sentence(tiny_weights, keys, body, tmp_path):
    budget = set_bytes(tiny_weights, "sd15") // 2
    with served_app(
        tiny_weights, keys, model_set="composite,sd15", lazy_load=True, memory_budget_bytes=budget,
        jobs_dir=tmp_path / "jobs",
    ) as client:  # fmt: skip
        wait_ready(client)
        refused = swap(client, body, "sd15")
        assert refused.status_code == 503 and "model set sd15 does not fit on cpu" in refused.json()["error"]
        explicit = client.post("/v1/models/sd15/load")
        assert explicit.status_code == 409 and "unload a set first" in explicit.json()["error"]


def test_the_models_command_lists_loads_and_unloads(client, keys, capsys):
    _, client_key, admin_key = keys
    with live_server(client.app) as url:
        assert main(["models", "--server", url, "--key", client_key, "list"]) == 0
        listed = capsys.readouterr().out
        assert "sd15 (default)\tloaded\tsd15" in listed and "composite\tloaded\tcomposite" in listed
        assert main(["models", "--server", url, "--key", client_key, "unload", "sd15"]) == 2
        assert "HTTP 403" in capsys.readouterr().err
        assert main(["models", "--server", url, "--key", admin_key, "unload", "sd15"]) == 0
        assert "sd15: unloaded in" in capsys.readouterr().out
        assert main(["models", "--server", url, "--key", admin_key, "load", "sd15"]) == 0
        assert capsys.readouterr().out.strip() == "sd15: loaded"


def test_a_lazy_single_set_server_loads_its_unloaded_set_on_the_next_request(tiny_weights, keys, body, tmp_path):
    """Readiness says a lazily loading server is ready with its only set unloaded: so the next request loads it
    (it used to meet the unloaded set's closed queue first: a 503 for ever)."""
    with served_app(tiny_weights, keys, model_set="composite", lazy_load=True, jobs_dir=tmp_path / "jobs") as client:
        wait_ready(client)
        assert client.post("/v1/models/composite/unload").status_code == 200
        assert client.get("/health/ready").status_code == 200
        swapped = client.post("/v1/seg-swap", json=body)
        assert swapped.status_code == 200, swapped.text
        assert card(client, "composite")["state"] == "loaded"
