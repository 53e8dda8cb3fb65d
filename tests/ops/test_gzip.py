"""gzip (issue 14 §5): answers from TRIAL_FHIR_GZIP_MIN_BYTES up are compressed when the client accepts gzip, by
either adapter and for streamed files too; smaller ones, and clients that don't ask, get them as they are; a strong
ETag becomes weak when the bytes are encoded."""

import asyncio
import gzip
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.factories import created, patient

GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


def raw_get(client: TestClient, url: str, headers: dict) -> httpx.Response:
    """The answer as it came over the wire (httpx would undo the gzip): its headers and the raw bytes."""
    with client.stream("GET", url, headers=headers) as response:
        response.raw_body = b"".join(response.iter_raw())
    return response


@pytest.fixture(params=[True, False], ids=["front-door", "routes"])
def client(settings, request):
    app = create_app(settings.model_copy(update={"front_door": request.param, "gzip_min_bytes": 2000}))
    with TestClient(app) as test_client:
        for _ in range(12):
            created(test_client.post("/fhir/Patient", json=patient()))
        yield test_client


def test_a_large_answer_is_compressed_when_asked(client):
    url = "/fhir/Patient?_count=12"
    plain = raw_get(client, url, PLAIN)
    assert "content-encoding" not in plain.headers and len(plain.raw_body) > 2000
    packed = raw_get(client, url, GZIP)
    assert packed.headers["content-encoding"] == "gzip" and "accept-encoding" in packed.headers["vary"].lower()
    assert len(packed.raw_body) < len(plain.raw_body) / 3
    unpacked = json.loads(gzip.decompress(packed.raw_body))
    assert unpacked["total"] == 12 and [e["resource"]["id"] for e in unpacked["entry"]] == \
        [e["resource"]["id"] for e in json.loads(plain.raw_body)["entry"]]
    assert packed.headers["x-request-id"] and packed.headers["content-security-policy"]  # still secured, observed


def test_a_small_answer_is_sent_as_it_is(client):
    small = raw_get(client, "/fhir/Patient?_count=1&_elements=gender", GZIP)
    assert small.status_code == 200 and len(small.raw_body) < 2000
    assert "content-encoding" not in small.headers


def test_a_read_keeps_its_weak_version_etag(settings):
    app = create_app(settings.model_copy(update={"gzip_min_bytes": 0}))
    with TestClient(app) as client:
        pid = created(client.post("/fhir/Patient", json=patient()))["id"]
        read = raw_get(client, f"/fhir/Patient/{pid}", GZIP)
        assert read.headers["content-encoding"] == "gzip" and read.headers["etag"] == 'W/"1"'
        assert client.get(f"/fhir/Patient/{pid}", headers={**GZIP, "If-None-Match": 'W/"1"'}).status_code == 304


def test_off_never_compresses(settings):
    app = create_app(settings.model_copy(update={"gzip": False}))
    with TestClient(app) as client:
        assert "content-encoding" not in raw_get(client, "/openapi.json", GZIP).headers


def test_the_default_threshold_packs_big_documents_only(settings):
    assert settings.gzip_min_bytes == 32_768
    with TestClient(create_app(settings)) as default:
        assert raw_get(default, "/openapi.json", GZIP).headers["content-encoding"] == "gzip"
        assert "content-encoding" not in raw_get(default, "/healthz", GZIP).headers


def test_an_export_file_is_streamed_compressed_with_a_weak_etag(client):
    from tests.export.test_export import kick_off, wait_for

    manifest = wait_for(client, kick_off(client, "/fhir/$export", _type="Patient")).json()
    url = manifest["output"][0]["url"]
    plain = raw_get(client, url, PLAIN)
    packed = raw_get(client, url, GZIP)
    assert plain.headers["etag"] and not plain.headers["etag"].startswith("W/")
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["etag"] == "W/" + plain.headers["etag"]
    assert gzip.decompress(packed.raw_body) == plain.raw_body and len(plain.raw_body.splitlines()) == 12


def test_a_strong_etag_becomes_weak_when_encoded():
    from service.api.compression import compressed

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"etag", b'"abc"')]})
        await send({"type": "http.response.body", "body": b"x" * 100})

    async def get(headers: dict) -> httpx.Response:
        transport = httpx.ASGITransport(app=compressed(app, minimum_size=10, level=1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/", headers=headers)
    encoded = asyncio.run(get(GZIP))
    assert encoded.headers["content-encoding"] == "gzip" and encoded.headers["etag"] == 'W/"abc"'
    assert asyncio.run(get(PLAIN)).headers["etag"] == '"abc"'


def test_a_head_has_the_headers_of_the_compressed_get(settings):
    with TestClient(create_app(settings.model_copy(update={"gzip_min_bytes": 1000}))) as client:
        got, head = raw_get(client, "/fhir/metadata", GZIP), client.head("/fhir/metadata", headers=GZIP)
        assert got.headers["content-encoding"] == head.headers["content-encoding"] == "gzip"
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.raw_body))
        assert head.content == b""


def _asgi_answer(chunks: list[bytes], length: bool):
    """A bare ASGI app answering `chunks` as one body, streamed, with or without a Content-Length."""
    async def app(scope, receive, send):
        headers = [(b"content-type", b"application/fhir+ndjson")]
        if length:
            headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
    return app


def _fetch(app, headers: dict) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            request = c.build_request("GET", "/", headers=headers)
            response = await c.send(request, stream=True)
            response.raw_body = b"".join([part async for part in response.aiter_raw()])
            return response
    return asyncio.run(go())


@pytest.mark.parametrize("length", [True, False], ids=["with-length", "without-length"])
def test_the_decision_is_taken_from_the_answers_length(length):
    """Below the threshold with a Content-Length: as it is, even streamed. Without a length, a stream may grow past
    any threshold: compressed (Starlette's responder), and a client that doesn't accept gzip gets the Vary."""
    from service.api.compression import compressed
    chunks = [b'{"resourceType":"Patient"}\n' * 20] * 3
    body = b"".join(chunks)
    app = compressed(_asgi_answer(chunks, length), minimum_size=len(body) + 1, level=1)
    packed = _fetch(app, GZIP)
    if length:
        assert "content-encoding" not in packed.headers and packed.raw_body == body
        assert packed.headers["content-length"] == str(len(body))
    else:
        assert packed.headers["content-encoding"] == "gzip" and gzip.decompress(packed.raw_body) == body
        plain = _fetch(app, PLAIN)
        assert "content-encoding" not in plain.headers and plain.raw_body == body
        assert "accept-encoding" in plain.headers["vary"].lower()
    big = compressed(_asgi_answer(chunks, length), minimum_size=len(body), level=1)  # at the threshold: packed
    assert gzip.decompress(_fetch(big, GZIP).raw_body) == body
