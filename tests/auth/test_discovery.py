"""What the server tells clients about its authorisation: SMART discovery, the JWKS of its signing keys (rotation
keeps a retired key until its tokens have expired) and the CapabilityStatement's rest.security."""

import threading
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text

from service.auth import keys, verify
from service.auth.verify import Authenticator
from service.main import create_app
from service.settings import Settings
from tests.auth.conftest import run
from tests.auth.tokens import get_token, register_client

BASE = "http://testserver/fhir"


def test_smart_configuration(client):
    response = client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.json()
    assert config["token_endpoint"] == "http://testserver/auth/token"
    assert config["jwks_uri"] == "http://testserver/auth/jwks"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert {"client-confidential-asymmetric", "permission-v1", "permission-v2"} <= set(config["capabilities"])
    for scope in ("system/*.cruds", "system/Observation.rs", "system/Patient.cruds", "system/AuditEvent.rs",
                  "system/ResearchSubject.rs", "system/AdverseEvent.rs", "system/ResearchStudy.rs"):
        assert scope in config["scopes_supported"]


def test_urls_follow_the_configured_base(database_url, tmp_path):
    settings = Settings(database_url=database_url, auth="smart", base_url="https://fhir.example.org/trial/fhir",
                        export_dir=tmp_path, export_worker=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        config = client.get("/fhir/.well-known/smart-configuration").json()
        assert config["token_endpoint"] == "https://fhir.example.org/trial/auth/token"
        assert config["jwks_uri"] == "https://fhir.example.org/trial/auth/jwks"
        security = client.get("/fhir/metadata").json()["rest"][0]["security"]
        assert security["extension"][0]["extension"][0]["valueUri"] == config["token_endpoint"]


def test_capability_statement_declares_smart_security(client):
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR",
        "display": "SMART-on-FHIR"}
    oauth = security["extension"][0]
    assert oauth["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert oauth["extension"] == [{"url": "token", "valueUri": "http://testserver/auth/token"}]
    assert "Backend Services" in security["description"]


def test_capability_statement_has_no_security_with_auth_off(database_url, tmp_path):
    settings = Settings(database_url=database_url, auth="off", export_dir=tmp_path, export_worker=False,
                        _env_file=None)
    with TestClient(create_app(settings)) as client:
        assert "security" not in client.get("/fhir/metadata").json()["rest"][0]


def test_jwks_publishes_the_public_signing_key_made_on_first_need(client, engine):
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM auth_signing_key")).scalar_one() == 0
    response = client.get("/auth/jwks")
    assert response.status_code == 200 and "max-age" in response.headers["cache-control"]
    (key,) = response.json()["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-384" and key["alg"] == "ES384" and key["use"] == "sig"
    assert "d" not in key and key["kid"]
    assert client.get("/auth/jwks").json()["keys"] == [key]  # made once


def test_the_first_key_is_made_once_by_racing_workers(engine):
    kids: list[str] = []
    barrier = threading.Barrier(6)

    def first_need() -> None:
        barrier.wait()
        kids.append(keys.current_key(engine).kid)

    threads = [threading.Thread(target=first_need) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(kids)) == 1 and len(kids) == 6
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM auth_signing_key")).scalar_one() == 1


def test_rotation_keeps_the_old_key_until_its_tokens_expire(client, engine):
    settings = client.app.state.settings
    client_id, key = register_client(engine, "system/Observation.rs")
    old_token = get_token(client, client_id, key, "system/Observation.rs")
    old_kid = client.get("/auth/jwks").json()["keys"][0]["kid"]
    keep = settings.token_lifetime_s + settings.auth_leeway_s
    new_kid, dropped = keys.rotate(engine, keep)
    assert new_kid != old_kid and dropped == []
    assert {k["kid"] for k in client.get("/auth/jwks").json()["keys"]} == {old_kid, new_kid}
    new_token = get_token(client, client_id, key, "system/Observation.rs")
    assert _kid(new_token) == new_kid
    authenticator = Authenticator(engine, settings)
    for token in (old_token, new_token):  # the old key still verifies its tokens
        assert run(authenticator.authenticate(f"Bearer {token}", BASE)).name == client_id

    # once retired longer than a token lives, the old key is no longer published, and the next rotation drops it
    with engine.begin() as conn:
        conn.execute(text("UPDATE auth_signing_key SET retired_at = :t WHERE kid = :k"),
                     {"t": datetime.now(UTC) - timedelta(seconds=keep + 1), "k": old_kid})
    assert {k["kid"] for k in client.get("/auth/jwks").json()["keys"]} == {new_kid}
    newest, dropped = keys.rotate(engine, keep)
    assert dropped == [old_kid]
    assert {k["kid"] for k in client.get("/auth/jwks").json()["keys"]} == {new_kid, newest}


def test_a_server_that_did_not_see_the_rotation_verifies_new_tokens(client, engine, monkeypatch):
    """Another worker's Authenticator has the old key in memory: an unknown kid makes it read the keys again."""
    settings = client.app.state.settings
    client_id, key = register_client(engine, "system/Observation.rs")
    authenticator = Authenticator(engine, settings)
    run(authenticator.authenticate(f"Bearer {get_token(client, client_id, key, 'system/Observation.rs')}", BASE))
    keys.rotate(engine, settings.token_lifetime_s + settings.auth_leeway_s)
    monkeypatch.setattr(verify, "OWN_KEYS_REFRESH_S", 0.0)  # (an unknown kid re-reads the keys at most every second)
    token = get_token(client, client_id, key, "system/Observation.rs")
    assert run(authenticator.authenticate(f"Bearer {token}", BASE)).name == client_id


def _kid(token: str) -> str:
    from service.auth.jwks import unverified
    return unverified(token)[0]["kid"]
