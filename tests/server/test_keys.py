"""Key file, revocation, endpoint permissions, per-key rate limits and credits."""

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines import CompositeEngine
from server.access.credits import open_ledger
from server.access.keys import KeyRecord, digest, read_key_file, write_key_file
from server.access.ratelimit import RateLimiter
from server.api.app import create_app
from server.api.live_server import live_server
from server.cli.main import main
from server.settings import Settings
from tests.conftest import wait_ready
from tests.server.engines import GatedEngine


@pytest.fixture()
def store_url(request) -> str | None:
    """The shared store of `keyed`: SQLite unless a test parametrizes it with "postgres" (indirect)."""
    return request.getfixturevalue("pg_url") if getattr(request, "param", "sqlite") == "postgres" else None


BOTH_STORES = pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture()
def keyed(tmp_path, monkeypatch, capsys, store_url):
    """A key file with: a plain key, a rate-limited key, a key limited to another endpoint, a metered key."""
    keys_file, ledger = tmp_path / "keys.toml", tmp_path / "credits.sqlite3"
    monkeypatch.setenv("SEGSWAP_CREDITS_DB", str(ledger))
    if store_url:  # `segswap keys` and the app both use it
        monkeypatch.setenv("SEGSWAP_DATABASE_URL", store_url)
    secrets = {}
    for key_id, extra in [
        ("plain", []),
        ("slow", ["--rate", "2"]),
        ("other", ["--endpoint", "/v2/seg-swap"]),
        ("metered", ["--credits", "2"]),
    ]:
        assert main(["keys", "--keys-file", str(keys_file), "add", key_id, *extra]) == 0
        secrets[key_id] = capsys.readouterr().out.strip()
    settings = Settings(keys_file=keys_file, credits_db=ledger, jobs_dir=tmp_path / "jobs", database_url=store_url)
    return settings, secrets


def balance(settings, key_id: str) -> int | None:
    ledger = open_ledger(settings)
    try:
        return ledger.balance(key_id)
    finally:
        ledger.close()


def client_for(settings, engine=None) -> TestClient:
    return TestClient(create_app(settings, engine or CompositeEngine()))


def test_key_file_stores_hashes_only(keyed):
    settings, secrets = keyed
    text = settings.keys_file.read_text()
    assert all(secret not in text for secret in secrets.values())
    assert set(read_key_file(settings.keys_file)) == {"plain", "slow", "other", "metered"}


def test_a_plain_serve_reads_the_key_file_keys_add_wrote_in_the_data_directory(tmp_path, monkeypatch, body, capsys):
    """`segswap keys add` without --keys-file writes keys.toml in the data directory; the server (no
    SEGSWAP_KEYS_FILE) must then require a key, not serve without auth."""
    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path))
    for name in ("SEGSWAP_KEYS_FILE", "SEGSWAP_API_KEYS", "SEGSWAP_CREDITS_DB", "SEGSWAP_JOBS_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert not Settings().auth_required
    assert main(["keys", "add", "mine"]) == 0
    secret, said = capsys.readouterr()
    assert f"added to {tmp_path / 'keys.toml'}" in said and "`segswap serve` requires a key" in said
    settings = Settings()
    assert settings.keys_file == tmp_path / "keys.toml"
    assert Settings(host="0.0.0.0").auth_required  # keys now: a public address is no longer refused
    with client_for(settings) as client:
        wait_ready(client)
        assert client.post("/v1/seg-swap", json=body).status_code == 401
        assert client.post("/v1/seg-swap", json=body, headers={"x-api-key": secret.strip()}).status_code == 200


def test_unknown_revoked_and_other_endpoint_keys(keyed, body, capsys):
    settings, secrets = keyed
    with client_for(settings) as client:
        wait_ready(client)
        assert client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["plain"]}).status_code == 200
        unknown = client.post("/v1/seg-swap", json=body, headers={"x-api-key": "ss-unknown"})
        assert unknown.status_code == 401 and unknown.json()["error"] == "invalid API key"
        other = client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["other"]})
        assert other.status_code == 403 and "not allowed to use /v1/seg-swap" in other.json()["error"]
        assert main(["keys", "--keys-file", str(settings.keys_file), "revoke", "plain"]) == 0
        revoked = client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["plain"]})
        assert revoked.status_code == 401 and revoked.json()["error"] == "API key revoked"
    assert main(["keys", "--keys-file", str(settings.keys_file), "list"]) == 0
    listing = capsys.readouterr().out
    assert "plain" in listing and "REVOKED" in listing and all(s not in listing for s in secrets.values())


def test_a_key_file_endpoint_of_no_family_allows_nothing_more_and_breaks_nothing(tmp_path, body):
    """A hand-edited key file, or one naming a route since removed: the key's requests got a 500, every one."""
    keys_file = tmp_path / "keys.toml"
    records = {"old": KeyRecord("old", digest("ss-old"), endpoints=("/v1/seg-swap", "/v1/removed"))}
    write_key_file(keys_file, records | {"odd": KeyRecord("odd", digest("ss-odd"), endpoints=("/v1/removed",))})
    with client_for(Settings(keys_file=keys_file, jobs_dir=tmp_path / "jobs")) as client:
        wait_ready(client)
        assert client.post("/v1/seg-swap", json=body, headers={"x-api-key": "ss-old"}).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": "ss-odd"}).status_code == 200
        refused = client.post("/v1/seg-swap", json=body, headers={"x-api-key": "ss-odd"})
        assert refused.status_code == 403 and "not allowed to use /v1/seg-swap" in refused.json()["error"]
        assert client.post("/v1/models/composite/unload", headers={"x-api-key": "ss-odd"}).status_code == 403


def test_rate_limit_answers_429_with_retry_after(keyed, body):
    settings, secrets = keyed
    with client_for(settings) as client:
        wait_ready(client)
        statuses = [client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["slow"]}) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert int(statuses[2].headers["Retry-After"]) >= 1 and "2 requests per minute" in statuses[2].json()["error"]
        # another key is not slowed down by this one
        assert client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["plain"]}).status_code == 200


@pytest.mark.parametrize(
    "command,option",
    [
        (["add", "k", "--rate", "-1"], "--rate"),
        (["add", "k", "--rate", "0"], "--rate"),
        (["add", "k", "--credits", "-1"], "--credits"),
        (["add", "k", "--credits", str(2**31)], "--credits"),  # past the ledger's INTEGER column in PostgreSQL
        (["credit", "plain", "9" * 30], "balance"),
    ],
)
def test_keys_refuse_a_nonsensical_limit_in_one_line_naming_the_option(tmp_path, monkeypatch, capsys, command, option):
    keys_file = tmp_path / "keys.toml"
    monkeypatch.setenv("SEGSWAP_CREDITS_DB", str(tmp_path / "credits.sqlite3"))
    assert main(["keys", "--keys-file", str(keys_file), "add", "plain"]) == 0
    written = keys_file.read_text()
    capsys.readouterr()
    assert main(["keys", "--keys-file", str(keys_file), *command]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"segswap: error: argument {option}: must be a whole number") and error.count("\n") == 1
    assert keys_file.read_text() == written  # no key added with a limit it cannot keep


def test_token_bucket_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert limiter.take("k", 60) == 0 and all(limiter.take("k", 60) == 0 for _ in range(59))
    assert limiter.take("k", 60) == pytest.approx(1.0)
    now[0] += 1.0
    assert limiter.take("k", 60) == 0


@BOTH_STORES
def test_credits_debited_on_success_only_then_406(keyed, body):
    settings, secrets = keyed
    headers = {"x-api-key": secrets["metered"]}
    with client_for(settings) as client:
        wait_ready(client)
        bad = client.post("/v1/seg-swap", json={**body, "main_image": "not-an-image"}, headers=headers)
        assert bad.status_code == 400  # failed before the engine: nothing spent
        first = client.post("/v1/seg-swap", json=body, headers=headers)
        assert first.status_code == 200 and first.headers["x-remaining-credits"] == "1"
        second = client.post("/v1/seg-swap", json=body, headers=headers)
        assert second.headers["x-remaining-credits"] == "0"
        broke = client.post("/v1/seg-swap", json=body, headers=headers)
        assert broke.status_code == 406 and "insufficient credits" in broke.json()["error"]
        assert broke.headers["x-remaining-credits"] == "0"
        plain = client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["plain"]})
        assert "x-remaining-credits" not in plain.headers  # unmetered keys carry no balance


def test_failed_job_is_refunded(keyed, body):
    settings, secrets = keyed
    engine = GatedEngine()
    with client_for(settings.model_copy(update={"request_timeout_s": 0.3}), engine) as client:
        wait_ready(client)
        engine.gate.clear()  # the job cannot finish before its deadline
        timed_out = client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["metered"]})
        engine.gate.set()
    assert timed_out.status_code == 504 and timed_out.headers["x-remaining-credits"] == "2"
    assert balance(settings, "metered") == 2


@BOTH_STORES
def test_parallel_requests_never_overspend(keyed, body):
    settings, secrets = keyed
    ledger = open_ledger(settings)
    ledger.set_balance("metered", 3)
    ledger.close()
    app = create_app(settings.model_copy(update={"max_queue": 64}), GatedEngine(delay=0.02))
    with live_server(app) as url:

        async def burst():
            async with httpx.AsyncClient(timeout=30, headers={"x-api-key": secrets["metered"]}) as client:
                return await asyncio.gather(
                    *(client.post(f"{url}/v1/seg-swap", json={**body, "seed": s}) for s in range(1, 11))
                )

        responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [406] * 7
    assert balance(settings, "metered") == 0


def test_selection_is_charged_like_a_swap_and_follows_the_swap_family(keyed):
    """/v1/seg-mask costs what a swap costs, nothing when the request is refused, and belongs to the `swap`
    endpoint family (a key limited to v2 may not call it)."""
    from PIL import Image, ImageDraw

    from tests.conftest import b64

    settings, secrets = keyed
    scene = Image.new("RGB", (96, 64), (40, 120, 60))
    ImageDraw.Draw(scene).ellipse((30, 15, 65, 50), fill=(230, 40, 40))
    body = {"main_image": b64(scene), "box": [25, 10, 70, 55]}
    with client_for(settings) as client:
        wait_ready(client)
        outside = client.post(
            "/v1/seg-mask", json={**body, "box": [0, 0, 500, 50]}, headers={"x-api-key": secrets["metered"]}
        )
        assert outside.status_code == 400 and balance(settings, "metered") == 2
        first = client.post("/v1/seg-mask", json=body, headers={"x-api-key": secrets["metered"]})
        assert first.status_code == 200 and first.headers["x-remaining-credits"] == "1"
        other = client.post("/v1/seg-mask", json=body, headers={"x-api-key": secrets["other"]})
        assert other.status_code == 403


def test_openai_edits_cost_one_credit_per_image(keyed):
    from PIL import Image, ImageDraw

    from tests.conftest import png_bytes

    settings, secrets = keyed
    mask = Image.new("RGBA", (64, 48), (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle((20, 10, 40, 30), fill=(0, 0, 0, 0))
    files = [
        ("image[]", png_bytes(Image.new("RGB", (64, 48), (40, 120, 60)))),
        ("image[]", png_bytes(Image.new("RGB", (20, 20), (220, 30, 30)))),
        ("mask", png_bytes(mask)),
    ]
    headers = {"Authorization": f"Bearer {secrets['metered']}"}
    with client_for(settings) as client:
        wait_ready(client)
        two = client.post("/v1/images/edits", files=files, data={"prompt": "x", "n": "2"}, headers=headers)
        assert two.status_code == 200 and len(two.json()["data"]) == 2 and two.headers["x-remaining-credits"] == "0"
        broke = client.post("/v1/images/edits", files=files, data={"prompt": "x"}, headers=headers)
        assert broke.status_code == 406 and "insufficient credits" in broke.json()["error"]["message"]


def test_a_key_file_edited_into_nonsense_keeps_the_keys_read_before_and_a_fixed_one_is_read_again(keyed, body, caplog):
    import os

    settings, secrets = keyed
    good = settings.keys_file.read_text()
    with client_for(settings) as client:
        wait_ready(client)
        plain = {"x-api-key": secrets["plain"]}
        assert client.post("/v1/seg-swap", json=body, headers=plain).status_code == 200
        for broken in ("[[keys]\nid = ", good.replace("rate_per_minute = 2", "rate_per_minute = -1")):
            settings.keys_file.write_text(broken)
            os.utime(settings.keys_file, ns=(0, settings.keys_file.stat().st_mtime_ns + 1_000_000))
            answer = client.post("/v1/seg-swap", json=body, headers=plain)
            assert answer.status_code == 200, answer.text  # not a 500 for every request, not an open door
            slow = client.post("/v1/seg-swap", json=body, headers={"x-api-key": secrets["slow"]})
            assert slow.status_code == 200, slow.text  # the rate read before: 2 a minute
        assert "the keys read before stay in use" in caplog.text and "rate_per_minute" in caplog.text
        assert good.count("revoked = false") == 4
        settings.keys_file.write_text(good.replace("revoked = false", "revoked = true", 1))  # plain, the first
        os.utime(settings.keys_file, ns=(0, settings.keys_file.stat().st_mtime_ns + 2_000_000))
        assert client.post("/v1/seg-swap", json=body, headers=plain).status_code == 401  # the fixed file is read


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[keys]]\nid = "a"\nsha256 = "00"\nrate_per_minute = 0\n', "rate_per_minute must be a whole number"),
        ('[[keys]]\nid = "a"\nsha256 = "00"\nendpoints = "/v1/seg-swap"\n', "endpoints must be a list"),
        ('[[keys]]\nid = "a"\nsha = "00"\n', "needs a text id and sha256"),
        ("[[keys]\n", "cannot be read"),
        ('[[keys]]\nid = "a"\nsha256 = "00"\n[[keys]]\nid = "a"\nsha256 = "11"\n', "'a' is taken by an earlier key"),
    ],
)
def test_a_key_file_that_is_not_keys_stops_serve_in_one_line_naming_the_file(tmp_path, monkeypatch, capsys, text, says):
    from server.api.live_server import free_port

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(text)
    monkeypatch.setenv("SEGSWAP_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path / "data"))
    assert main(["serve", "--engine", "composite", "--port", str(free_port())]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("segswap: error: ") and str(keys_file) in error and says in error, error


def test_an_endpoint_of_no_family_in_the_key_file_is_said_in_the_log(tmp_path, caplog):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nid = "a"\nsha256 = "00"\nendpoints = ["swapp"]\n')
    assert read_key_file(keys_file)["a"].endpoints == ("swapp",)  # allows nothing, but the file still serves
    assert "endpoints 'swapp' belong to no family (swap, jobs, admin) and allow nothing" in caplog.text
