"""The EHR client against a mocked upstream (respx): paging, tokens, retries, Retry-After, Bulk Data, redirects."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import ECKey

from service.ehr.client import (
    ASSERTION_LIFETIME_S,
    BearerAuth,
    EhrClient,
    SmartAuth,
    UpstreamError,
    _Retry,
    load_private_key,
    retry_after_s,
)

EHR = "https://ehr.example.org/fhir"
TOKEN_URL = "https://auth.example.org/token"


def run(coro):
    return asyncio.run(coro)


async def _collect(client: EhrClient, rtype: str, params) -> list[list[str]]:
    return [[r["id"] for r in page] async for page in client.search(rtype, params)]


def _bundle(ids, next_url=None):
    body = {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Observation", "id": i}, "search": {"mode": "match"}} for i in ids]}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


async def _with_client(work, auth=None, **options):
    async with httpx.AsyncClient() as http:
        return await work(EhrClient(http, EHR, auth(http) if callable(auth) else auth, **options))


@respx.mock
def test_search_follows_next_links_relative_and_absolute_and_keeps_only_matches():
    first = respx.get(f"{EHR}/Observation", params={"patient": "p1"}).respond(
        json=_bundle(["a", "b"], "Observation?page=2"))
    respx.get(f"{EHR}/Observation", params={"page": "2"}).respond(json=_bundle(["c"], f"{EHR}/Observation?page=3"))
    third = {**_bundle(["d"]), "entry": [*_bundle(["d"])["entry"],
                                          {"resource": {"resourceType": "Patient", "id": "p1"},
                                           "search": {"mode": "include"}}]}
    respx.get(f"{EHR}/Observation", params={"page": "3"}).respond(json=third)
    pages = run(_with_client(lambda c: _collect(c, "Observation", [("patient", "p1")])))
    assert pages == [["a", "b"], ["c"], ["d"]]
    assert first.calls.last.request.url.params["patient"] == "p1"
    assert first.calls.last.request.headers["accept"] == "application/fhir+json"


@respx.mock
def test_a_bearer_token_is_sent_and_never_shown():
    route = respx.get(f"{EHR}/metadata").respond(json={"resourceType": "CapabilityStatement"})
    auth = BearerAuth("s3cret-token")
    run(_with_client(lambda c: c.capability(), auth))
    assert route.calls.last.request.headers["authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in repr(auth)


def _smart(tmp_path, clock=None):
    """A SmartAuth factory (it takes the client's httpx client) and the token requests it made."""
    key = ECKey.generate_key("P-384", private=True)
    key.ensure_kid()
    path = tmp_path / "key.jwk"
    path.write_text(json.dumps(key.as_dict(private=True)))
    seen: list[dict] = []

    def token(request: httpx.Request):
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        assertion = jwt.decode(form["client_assertion"], key, algorithms=["ES384"])
        seen.append({"form": form, "header": assertion.header, "claims": assertion.claims})
        return httpx.Response(200, json={"access_token": f"token-{len(seen)}", "token_type": "bearer",
                                         "expires_in": 300, "scope": form.get("scope")})

    respx.post(TOKEN_URL).mock(side_effect=token)
    options = {"clock": clock} if clock else {}
    return (lambda http: SmartAuth(http, TOKEN_URL, "our-client", load_private_key(path),
                                   scope="system/Observation.rs", **options)), seen


@respx.mock
def test_smart_backend_services_signs_a_fresh_short_assertion_and_renews_on_401(tmp_path):
    auth, seen = _smart(tmp_path)
    route = respx.get(f"{EHR}/metadata").mock(side_effect=[
        httpx.Response(200, json={"resourceType": "CapabilityStatement"}),
        httpx.Response(401), httpx.Response(200, json={"resourceType": "CapabilityStatement"})])

    async def twice(client):
        await client.capability()
        await client.capability()  # 401: a new token, and once more
    run(_with_client(twice, auth))
    assert [c.request.headers["authorization"] for c in route.calls] == ["Bearer token-1", "Bearer token-1",
                                                                        "Bearer token-2"]
    assert len(seen) == 2
    for s in seen:
        claims, form = s["claims"], s["form"]
        assert claims["iss"] == claims["sub"] == "our-client" and claims["aud"] == TOKEN_URL
        assert 0 < claims["exp"] - claims["iat"] <= ASSERTION_LIFETIME_S
        assert s["header"]["alg"] == "ES384" and s["header"]["kid"]
        assert form["grant_type"] == "client_credentials" and form["scope"] == "system/Observation.rs"
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert seen[0]["claims"]["jti"] != seen[1]["claims"]["jti"]


@respx.mock
def test_a_token_about_to_expire_mid_sync_is_renewed_before_use(tmp_path):
    now = [1_000_000.0]
    auth, seen = _smart(tmp_path, clock=lambda: now[0])
    route = respx.get(f"{EHR}/metadata").respond(json={"resourceType": "CapabilityStatement"})

    async def over_time(client):
        await client.capability()
        now[0] += 200  # within its 300 s, outside the 30 s margin: kept
        await client.capability()
        now[0] += 80  # 280 s old: renewed before it is sent
        await client.capability()
    run(_with_client(over_time, auth))
    assert [c.request.headers["authorization"] for c in route.calls] == ["Bearer token-1", "Bearer token-1",
                                                                        "Bearer token-2"]
    assert len(seen) == 2


@respx.mock
def test_a_401_that_persists_is_an_error_after_one_renewal(tmp_path):
    auth, seen = _smart(tmp_path)
    respx.get(f"{EHR}/metadata").respond(401)
    with pytest.raises(UpstreamError, match="answered 401"):
        run(_with_client(lambda c: c.capability(), auth))
    assert len(seen) == 2


@respx.mock
def test_503_is_retried_then_succeeds_and_a_lasting_one_is_an_error():
    route = respx.get(f"{EHR}/metadata").mock(side_effect=[httpx.Response(503), httpx.Response(502),
                                                            httpx.Response(200, json={"resourceType": "X"})])
    assert run(_with_client(lambda c: c.capability()))["resourceType"] == "X"
    assert route.call_count == 3
    respx.get(f"{EHR}/Patient").respond(503)
    with pytest.raises(UpstreamError, match="answered 503 after 4 attempts"):
        run(_with_client(lambda c: c.get_json("Patient"), attempts=4))


@respx.mock
def test_network_errors_are_retried():
    route = respx.get(f"{EHR}/metadata").mock(side_effect=[httpx.ConnectError("down"), httpx.ReadTimeout("slow"),
                                                            httpx.Response(200, json={"resourceType": "X"})])
    run(_with_client(lambda c: c.capability()))
    assert route.call_count == 3


@respx.mock
def test_429_is_retried():
    route = respx.get(f"{EHR}/metadata").mock(side_effect=[httpx.Response(429, headers={"Retry-After": "1"}),
                                                            httpx.Response(200, json={"resourceType": "X"})])
    run(_with_client(lambda c: c.capability()))
    assert route.call_count == 2


def test_retry_after_seconds_and_http_date_set_the_wait_and_a_cap_bounds_it():
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    assert retry_after_s("soon", now) is None and retry_after_s(None) is None
    client = EhrClient(httpx.AsyncClient(), EHR, wait_cap_s=120.0)
    response = httpx.Response(429, request=httpx.Request("GET", EHR))
    assert client._backoff(_Retry(response, 7.0)) == 7.0
    assert client._backoff(_Retry(response, 7200.0)) == 120.0  # a vendor's two hours: capped
    assert client._backoff(_Retry(response, None)) is True  # our exponential backoff with jitter
    assert client._backoff(httpx.ConnectError("x")) is True
    assert client._backoff(ValueError("x")) is False


@respx.mock
def test_no_authorization_follows_a_redirect_to_another_host_but_it_does_to_the_same_host():
    respx.get(f"{EHR}/Binary/1").respond(307, headers={"Location": "https://storage.example.net/file?sig=1"})
    storage = respx.get("https://storage.example.net/file").respond(json={"resourceType": "Binary"})
    respx.get(f"{EHR}/Binary/2").respond(302, headers={"Location": f"{EHR}/Binary/3"})
    same = respx.get(f"{EHR}/Binary/3").respond(json={"resourceType": "Binary"})

    async def both(client):
        await client.get_json("Binary/1")
        await client.get_json("Binary/2")
    run(_with_client(both, BearerAuth("tok")))
    assert "authorization" not in storage.calls.last.request.headers
    assert same.calls.last.request.headers["authorization"] == "Bearer tok"


@respx.mock
def test_bulk_export_kick_off_poll_with_retry_after_download_streaming_and_delete():
    status_url = f"{EHR}/bulkstatus/42"
    kick = respx.get(f"{EHR}/Group/g1/$export").respond(202, headers={"Content-Location": status_url})
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    manifest = {"transactionTime": "2026-11-29T10:00:00.000+00:00", "requiresAccessToken": False,
                "output": [{"type": "Observation", "url": "https://files.example.net/obs.ndjson"}],
                "error": [], "deleted": []}
    poll = respx.get(status_url).mock(side_effect=[
        httpx.Response(202, headers={"Retry-After": "3", "X-Progress": "10%"}),
        httpx.Response(429, headers={"Retry-After": later}),
        httpx.Response(503),
        httpx.Response(202),
        httpx.Response(200, json=manifest)])
    lines = "\n".join(json.dumps({"resourceType": "Observation", "id": f"o{i}"}) for i in range(3)) + "\n\n"
    download = respx.get("https://files.example.net/obs.ndjson").respond(200, text=lines)
    delete = respx.delete(status_url).respond(202)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def flow(client):
        url = await client.kick_off_export("g1", ["Observation", "AdverseEvent"], "2026-11-28T00:00:00Z")
        got = await client.wait_for_export(url)
        found = [r["id"] async for r in client.ndjson(got.output[0][1], requires_token=got.requires_token)]
        await client.delete_export(url)
        return client, got, found
    client, got, found = run(_with_client(flow, BearerAuth("tok"), sleep=sleep, wait_cap_s=60.0))
    request = kick.calls.last.request
    assert request.headers["prefer"] == "respond-async" and request.headers["accept"] == "application/fhir+json"
    assert request.url.params["_type"] == "Observation,AdverseEvent"
    assert request.url.params["_since"] == "2026-11-28T00:00:00Z"
    assert poll.call_count == 5 and delete.called
    assert got.transaction_time == manifest["transactionTime"] and found == ["o0", "o1", "o2"]
    # 3 s as asked; the 429's date (about 30 s, at least double); a 503 doubles; then doubles again (capped at 60)
    assert client.waits[0] == 3.0
    assert 25 <= client.waits[1] <= 30
    assert client.waits[2] == pytest.approx(2 * client.waits[1]) and client.waits[3] == 60.0
    assert sum(slept) == pytest.approx(sum(client.waits))
    assert "authorization" not in download.calls.last.request.headers  # requiresAccessToken false
    assert download.calls.last.request.headers["accept"] == "application/fhir+ndjson"


@respx.mock
def test_bulk_files_get_the_token_when_the_manifest_requires_it_and_the_kick_off_is_not_retried():
    route = respx.get("https://files.example.net/a.ndjson").respond(200, text='{"resourceType":"Observation","id":"x"}')
    respx.get(f"{EHR}/Group/g1/$export").respond(503)

    async def flow(client):
        found = [r async for r in client.ndjson("https://files.example.net/a.ndjson", requires_token=True)]
        with pytest.raises(UpstreamError, match="kick-off .* answered 503"):
            await client.kick_off_export("g1", ["Observation"], None)
        return found
    assert len(run(_with_client(flow, BearerAuth("tok")))) == 1
    assert route.calls.last.request.headers["authorization"] == "Bearer tok"
    assert respx.routes[1].call_count == 1


@pytest.mark.parametrize("retry_after, waits", [("50", [50.0, 50.0]), ("0", [1.0] * 120)])
@respx.mock
def test_an_export_that_never_completes_is_given_up(retry_after, waits):
    respx.get(f"{EHR}/bulkstatus/1").respond(202, headers={"Retry-After": retry_after})

    async def nap(_: float) -> None:
        return None

    async def wait(client):
        with pytest.raises(UpstreamError, match="did not complete within 120 s"):
            await client.wait_for_export(f"{EHR}/bulkstatus/1")
        return client.waits
    assert run(_with_client(wait, sleep=nap, export_max_s=120.0)) == waits  # `Retry-After: 0`: not a busy loop
