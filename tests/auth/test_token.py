"""POST /auth/token through the app: SMART Backend Services' client_credentials grant with a private_key_jwt
assertion, its success (RS384 and ES384) and each way it is refused, as OAuth error JSON."""

import json
import time

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import OctKey

from service.auth.clients import add_client, disable_client
from tests.auth.tokens import ASSERTION_TYPE, assertion, new_key, public_jwks, register_client, token_request

SCOPE = "system/Observation.rs system/Patient.rs"


def _post(client, **form):
    return client.post("/auth/token", data={k: v for k, v in form.items() if v is not None})


def _form(client_id, key, scope=SCOPE, **claims):
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(client_id, key, **claims), "scope": scope}


def _error(response, error, status=None):
    assert response.status_code == (status or (401 if error == "invalid_client" else 400)), response.text
    body = response.json()
    assert body["error"] == error and body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    return body["error_description"]


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_client_gets_an_access_token(client, engine, alg):
    client_id, key = register_client(engine, SCOPE, studies=["AD-MSC-01"], deidentified=True, alg=alg)
    response = token_request(client, client_id, key, "system/Observation.rs")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/Observation.rs"
    assert "refresh_token" not in body
    header = jwt.decode(body["access_token"], _server_key(client, body["access_token"]), algorithms=["ES384"])
    assert header.header["typ"] == "at+jwt" and header.header["alg"] == "ES384"
    claims = header.claims
    assert claims["iss"] == claims["aud"] == "http://testserver/fhir"
    assert claims["sub"] == claims["client_id"] == client_id
    assert claims["scope"] == "system/Observation.rs" and claims["studies"] == ["AD-MSC-01"]
    assert claims["deidentified"] is True and claims["jti"]
    assert claims["exp"] - claims["iat"] == body["expires_in"]


def _server_key(client, token):
    from service.auth.jwks import select_key, unverified
    header, _ = unverified(token)
    return select_key(client.get("/auth/jwks").json()["keys"], header["kid"], "ES384")


def test_requested_scopes_are_narrowed_to_the_registered_ones(client, engine):
    client_id, key = register_client(engine, "system/Observation.rs system/Patient.r")
    body = token_request(client, client_id, key, "system/*.cruds system/AdverseEvent.rs").json()
    assert body["scope"] == "system/Observation.rs system/Patient.r"
    body = token_request(client, client_id, key, "system/Observation.read").json()  # v1 read = rs
    assert body["scope"] == "system/Observation.rs"


def test_scopes_nothing_grants_or_nobody_can_parse_are_invalid_scope(client, engine):
    client_id, key = register_client(engine, "system/Observation.rs")
    _error(token_request(client, client_id, key, "system/AdverseEvent.rs"), "invalid_scope")
    _error(token_request(client, client_id, key, "system/Observation.c"), "invalid_scope")
    _error(token_request(client, client_id, key, "patient/Observation.rs"), "invalid_scope")
    _error(token_request(client, client_id, key, "system/Observation.sr"), "invalid_scope")


def test_missing_and_wrong_parameters(client, engine):
    client_id, key = register_client(engine, SCOPE)
    form = _form(client_id, key)
    for name in form:
        _error(_post(client, **{**form, name: None}), "invalid_request")
    _error(_post(client, **{**form, "grant_type": "authorization_code"}), "unsupported_grant_type")
    _error(_post(client, **{**form, "client_assertion_type": "urn:other"}), "invalid_request")
    _error(client.post("/auth/token", json=form), "invalid_request")  # not a form
    _error(client.post("/auth/token", content="scope=a&scope=b&" + "&".join(
        f"{k}={v}" for k, v in form.items() if k != "scope"),
        headers={"Content-Type": "application/x-www-form-urlencoded"}), "invalid_request")


def test_the_assertion_must_be_signed_by_the_clients_key(client, engine):
    client_id, key = register_client(engine, SCOPE)
    stranger = new_key("ES384", key.kid)  # same kid, another key
    _error(_post(client, **_form(client_id, stranger)), "invalid_client")
    _error(_post(client, **_form(client_id, new_key("ES384"))), "invalid_client")  # unknown kid
    _error(_post(client, **{**_form(client_id, key), "client_assertion": "not.a.jwt"}), "invalid_client")
    _error(_post(client, **_form("no-such-client", key, sub="no-such-client")), "invalid_client")


def test_only_rs384_and_es384_assertions_are_accepted(client, engine):
    client_id, key = register_client(engine, SCOPE)
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": "http://testserver/auth/token", "exp": now + 60,
              "jti": "hs"}
    hs = jwt.encode({"alg": "HS256", "kid": key.kid}, claims, OctKey.import_key("secret" * 6),
                    algorithms=["HS256"])
    description = _error(_post(client, **{**_form(client_id, key), "client_assertion": hs}), "invalid_client")
    assert "HS256" in description
    none = _b64(json.dumps({"alg": "none", "kid": key.kid})) + "." + hs.split(".")[1] + "."  # unsigned
    assert "'none'" in _error(_post(client, **{**_form(client_id, key), "client_assertion": none}), "invalid_client")
    # ES256 (P-256) is not one of SMART's two, even with the client's kid
    assert "ES256" in _error(_post(client, **{**_form(client_id, key), "client_assertion": _es256(client_id, key)}),
                             "invalid_client")


def _b64(text):
    import base64
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _es256(client_id, key):
    from joserfc.jwk import ECKey
    p256 = ECKey.generate_key("P-256", parameters={"kid": key.kid})
    now = int(time.time())
    return jwt.encode({"alg": "ES256", "kid": key.kid}, {"iss": client_id, "sub": client_id, "jti": "x",
                                                         "aud": "http://testserver/auth/token", "exp": now + 60},
                      p256, algorithms=["ES256"])


def test_claims_are_checked(client, engine):
    client_id, key = register_client(engine, SCOPE)
    cases = {
        "sub must equal iss": dict(sub="someone-else"),
        "aud must be the token URL": dict(aud="https://elsewhere.example.org/token"),
        "expired": dict(lifetime=-120),
        "more than 5 minutes ahead": dict(lifetime=301 + 30 + 60),
        "exp is missing": dict(exp=None),
        "jti is missing": dict(jti=""),
        "not valid yet": dict(nbf=int(time.time()) + 600),
    }
    for expected, claims in cases.items():
        if claims.get("jti") == "":
            form = {**_form(client_id, key), "client_assertion": _without_jti(client_id, key)}
        else:
            form = _form(client_id, key, **claims)
        assert expected in _error(_post(client, **form), "invalid_client"), expected


def _without_jti(client_id, key):
    now = int(time.time())
    return jwt.encode({"alg": "ES384", "kid": key.kid}, {"iss": client_id, "sub": client_id, "exp": now + 60,
                                                         "aud": "http://testserver/auth/token"},
                      key, algorithms=["ES384"])


def test_aud_may_be_the_token_url_or_the_issuer(client, engine):
    client_id, key = register_client(engine, SCOPE)
    for aud in ("http://testserver/auth/token", "http://testserver/fhir", ["x", "http://testserver/auth/token"]):
        assert _post(client, **_form(client_id, key, aud=aud)).status_code == 200, aud


def test_exp_up_to_five_minutes_ahead_is_accepted(client, engine):
    client_id, key = register_client(engine, SCOPE)
    assert _post(client, **_form(client_id, key, lifetime=300)).status_code == 200


def test_a_replayed_assertion_is_refused(client, engine):
    client_id, key = register_client(engine, SCOPE)
    form = _form(client_id, key, jti="once")
    assert _post(client, **form).status_code == 200
    assert "already used" in _error(_post(client, **form), "invalid_client")
    # the same jti from another client is that client's own
    other_id, other_key = register_client(engine, SCOPE)
    assert _post(client, **_form(other_id, other_key, jti="once")).status_code == 200


def test_expired_jtis_are_purged(client, engine):
    from sqlalchemy import text
    client_id, key = register_client(engine, SCOPE)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO auth_seen_jti (client_id, jti, expires_at) VALUES (:c, 'old', :t)"),
                     {"c": client_id, "t": "2020-01-01 00:00:00"})
    assert _post(client, **_form(client_id, key)).status_code == 200
    with engine.connect() as conn:
        jtis = conn.execute(text("SELECT jti FROM auth_seen_jti")).scalars().all()
    assert "old" not in jtis and len(jtis) == 1


def test_a_disabled_client_gets_no_token(client, engine):
    client_id, key = register_client(engine, SCOPE)
    disable_client(engine, client_id)
    assert "disabled" in _error(_post(client, **_form(client_id, key)), "invalid_client")


@respx.mock
def test_a_client_may_publish_its_keys_at_a_url(client, engine):
    key = new_key("RS384")
    route = respx.get("https://client.example.org/jwks.json").mock(
        return_value=httpx.Response(200, json=public_jwks(key), headers={"Cache-Control": "max-age=600"}))
    registered = add_client(engine, "remote keys", SCOPE, jwks_url="https://client.example.org/jwks.json")
    assert _post(client, **_form(registered.client_id, key)).status_code == 200
    assert _post(client, **_form(registered.client_id, key)).status_code == 200
    assert route.call_count == 1  # cached within max-age
    _error(_post(client, **_form(registered.client_id, new_key("RS384"))), "invalid_client")


def test_a_client_id_parameter_must_match_the_assertion(client, engine):
    client_id, key = register_client(engine, SCOPE)
    assert _post(client, **_form(client_id, key), client_id=client_id).status_code == 200
    assert "client_id" in _error(_post(client, **_form(client_id, key), client_id="other"), "invalid_client")


def test_get_token_follows_a_configured_base_url(database_url, tmp_path):
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings
    from tests.auth.tokens import get_token
    settings = Settings(database_url=database_url, auth="smart", base_url="https://fhir.example.org/fhir",
                        export_dir=tmp_path, export_worker=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        client_id, key = register_client(client.app.state.engine, SCOPE)
        assert get_token(client, client_id, key, SCOPE)
        _error(token_request(client, client_id, key, SCOPE, aud="http://testserver/auth/token"), "invalid_client")
