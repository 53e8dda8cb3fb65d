"""Real access tokens for tests: register a client straight in the database, then ask the app's token endpoint
for a token over HTTP, exactly as a SMART Backend Services client would.

    client_id, key = register_client(engine, "system/Observation.rs", studies=["AD-MSC-01"])
    token = get_token(client, client_id, key, "system/Observation.rs")
    client.get("/fhir/Observation", headers={"Authorization": f"Bearer {token}"})
"""

import time
import uuid
from typing import Any

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey
from sqlalchemy.engine import Engine

from service.api.http import base_of
from service.auth.clients import add_client
from service.auth.urls import auth_urls
from service.db import make_engine

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_URL = "http://testserver/auth/token"  # the token URL of an app without TRIAL_FHIR_BASE_URL, under TestClient


def new_key(alg: str = "ES384", kid: str | None = None) -> Key:
    """A client's private key for RS384 (RSA 2048) or ES384 (P-384), with a kid."""
    kid = kid or uuid.uuid4().hex[:12]
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
    return ECKey.generate_key("P-384", parameters={"kid": kid}, private=True)


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [dict(k.as_dict(private=False)) for k in keys]}


def register_client(engine_or_url: Engine | str, scope: str, studies: tuple[str, ...] | list[str] = (),
                    deidentified: bool = False, *, alg: str = "ES384", name: str = "test client") -> tuple[str, Key]:
    """Register a client with a fresh key pair (ES384 unless `alg="RS384"`): its client id and private key."""
    key = new_key(alg)
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        client = add_client(engine, name, scope, jwks=public_jwks(key), studies=tuple(studies),
                            deidentified=deidentified)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    return client.client_id, key


def assertion(client_id: str, key: Key, *, aud: str | list[str] = TOKEN_URL, lifetime: int = 240,
              jti: str | None = None, alg: str | None = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
    """A signed client assertion (RFC 7523) as SMART asks; keyword arguments override or add claims."""
    now = int(time.time())
    alg = alg or ("RS384" if key.key_type == "RSA" else "ES384")
    body = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "iat": now,
            "jti": jti or uuid.uuid4().hex, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT", **(header or {})}, body, key, algorithms=[alg])


def token_url(client: TestClient) -> str:
    """The token URL the app advertises (TRIAL_FHIR_BASE_URL, else the test client's base + /fhir, next to it)."""
    return auth_urls(base_of(client.app.state.settings.base_url, str(client.base_url))).token


def token_request(client: TestClient, client_id: str, key: Key, scope: str, **claims: Any) -> Any:
    """POST /auth/token with a fresh assertion (`aud` the app's token URL unless given): the response."""
    claims.setdefault("aud", token_url(client))
    return client.post("/auth/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(client_id, key, **claims), "scope": scope})


def get_token(client: TestClient, client_id: str, key: Key, scope: str) -> str:
    """An access token from the app's token endpoint (fails the test when refused)."""
    response = token_request(client, client_id, key, scope)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token
