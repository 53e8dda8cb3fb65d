"""Authenticator: the Caller of a bearer token, this server's own or a trusted external issuer's, and every way a
token is refused (401 with a message naming what is wrong, never the token)."""

import time
import uuid

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.jwk import OctKey

from service.auth import verify
from service.auth.clients import disable_client
from service.auth.scopes import Scope
from service.auth.verify import Authenticator
from service.errors import Unauthorized
from service.settings import Settings
from tests.auth.conftest import run
from tests.auth.tokens import get_token, new_key, public_jwks, register_client

BASE = "http://testserver/fhir"
IDP = "https://idp.example.org/realms/trial"
IDP_JWKS = f"{IDP}/protocol/openid-connect/certs"


def refused(authenticator, authorization, base=BASE, match=None):
    with pytest.raises(Unauthorized) as caught:
        run(authenticator.authenticate(authorization, base))
    message = str(caught.value)
    if authorization and authorization.split(" ", 1)[-1].strip():
        assert authorization.split(" ", 1)[-1] not in message  # the token is never echoed
    if match:
        assert match in message, message
    return caught.value


@pytest.fixture
def own(client, engine):
    """A registered client's access token from the app, and an Authenticator on the app's database."""
    client_id, key = register_client(engine, "system/Observation.rs system/Patient.rs", studies=["S1", "S2"],
                                     deidentified=True)
    token = get_token(client, client_id, key, "system/Observation.rs")
    return client_id, token, Authenticator(engine, client.app.state.settings)


def test_own_token_gives_the_caller(own):
    client_id, token, authenticator = own
    caller = run(authenticator.authenticate(f"Bearer {token}", BASE))
    assert caller.name == client_id and caller.issuer == BASE
    assert caller.scopes == (Scope("Observation", "rs"),)
    assert caller.studies == frozenset({"S1", "S2"}) and caller.deidentified is True
    assert caller.expires_at and time.time() < caller.expires_at <= time.time() + 300
    assert run(authenticator.authenticate(f"bearer {token}", BASE + "/")) == caller  # scheme case, trailing slash


def test_the_app_has_an_authenticator(client, own):
    _, token, _ = own
    caller = run(client.app.state.authenticator.authenticate(f"Bearer {token}", BASE))
    assert caller.scopes == (Scope("Observation", "rs"),)


def test_a_token_is_verified_once(own, monkeypatch):
    _, token, authenticator = own
    calls = []
    real = verify.jwt.decode
    monkeypatch.setattr(verify.jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(5):
        run(authenticator.authenticate(f"Bearer {token}", BASE))
    assert len(calls) == 1


def test_a_cached_token_still_expires(own):
    _, token, authenticator = own
    run(authenticator.authenticate(f"Bearer {token}", BASE))
    authenticator.clock = lambda: time.time() + 301 + authenticator.settings.auth_leeway_s
    refused(authenticator, f"Bearer {token}", match="expired")


def test_missing_header_and_wrong_scheme(own):
    _, token, authenticator = own
    error = refused(authenticator, None, match="No access token")
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="trial-fhir"'}
    refused(authenticator, "", match="No access token")
    error = refused(authenticator, f"Basic {token}", match="Bearer")
    assert 'error="invalid_token"' in error.headers["WWW-Authenticate"]
    refused(authenticator, "Bearer ", match="Bearer")
    refused(authenticator, "Bearer abc.def", match="malformed")


def test_a_tampered_token_is_refused(own):
    _, token, authenticator = own
    header, claims, signature = token.split(".")
    forged_claims = claims[:-4] + ("AAAA" if claims[-4:] != "AAAA" else "BBBB")
    refused(authenticator, f"Bearer {header}.{forged_claims}.{signature}")
    refused(authenticator, f"Bearer {header}.{claims}.{signature[::-1]}", match="signature")


def test_a_token_for_another_base_is_refused(own):
    _, token, authenticator = own
    refused(authenticator, f"Bearer {token}", base="https://other.example.org/fhir", match="issuer")


def test_own_tokens_signed_with_an_unknown_key_or_algorithm_are_refused(own):
    client_id, _, authenticator = own
    now = int(time.time())
    claims = {"iss": BASE, "aud": BASE, "sub": client_id, "client_id": client_id, "exp": now + 60,
              "scope": "system/*.cruds"}
    stranger = new_key("ES384")
    forged = jwt.encode({"alg": "ES384", "kid": stranger.kid, "typ": "at+jwt"}, claims, stranger,
                        algorithms=["ES384"])
    refused(authenticator, f"Bearer {forged}", match="signing key is unknown")
    hs = jwt.encode({"alg": "HS256", "typ": "at+jwt"}, claims, OctKey.import_key("s" * 32), algorithms=["HS256"])
    refused(authenticator, f"Bearer {hs}", match="'HS256'")
    none = _b64('{"alg":"none","typ":"at+jwt"}') + "." + hs.split(".")[1] + "."
    refused(authenticator, f"Bearer {none}", match="'none'")


def _b64(text):
    import base64
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_a_disabled_clients_tokens_stop_working(own, engine, monkeypatch):
    client_id, token, authenticator = own
    run(authenticator.authenticate(f"Bearer {token}", BASE))
    disable_client(engine, client_id)
    monkeypatch.setattr(verify, "DISABLED_TTL_S", 0.0)
    refused(authenticator, f"Bearer {token}", match="disabled")


# -- external issuers ---------------------------------------------------------------------------------------------

@pytest.fixture
def idp_key():
    return new_key("RS384", "idp-1")


@pytest.fixture
def external(database_url, idp_key):
    settings = Settings(database_url=database_url, auth="smart", _env_file=None,
                        trusted_issuers=[{"issuer": IDP, "jwks_url": IDP_JWKS, "audience": "trial-fhir"}])
    from service.db import make_engine
    engine = make_engine(database_url)
    with respx.mock:
        respx.get(IDP_JWKS).mock(return_value=httpx.Response(200, json=public_jwks(idp_key),
                                                             headers={"Cache-Control": "max-age=300"}))
        yield Authenticator(engine, settings)
    engine.dispose()


def idp_token(key, alg="RS256", **claims):
    now = int(time.time())
    body = {"iss": IDP, "aud": "trial-fhir", "sub": "svc-1", "azp": "portal", "exp": now + 300, "iat": now,
            "jti": uuid.uuid4().hex, "scope": "system/Observation.rs openid profile", **claims}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, {k: v for k, v in body.items() if v is not None},
                      key, algorithms=[alg])


def test_external_issuer_token(external, idp_key):
    caller = run(external.authenticate(f"Bearer {idp_token(idp_key)}", BASE))
    assert caller.name == "portal" and caller.issuer == IDP
    assert caller.scopes == (Scope("Observation", "rs"),)  # openid and profile: not ours, ignored
    assert caller.studies is None and caller.deidentified is False


def test_external_scp_list_studies_and_deidentified_claims(external, idp_key):
    token = idp_token(idp_key, alg="RS384", scope=None, scp=["system/Patient.rs", "weird", "system/Observation.r"],
                      studies=["S9"], deidentified=True, aud=["account", "trial-fhir"])
    caller = run(external.authenticate(f"Bearer {token}", BASE))
    assert caller.scopes == (Scope("Patient", "rs"), Scope("Observation", "r"))
    assert caller.studies == frozenset({"S9"}) and caller.deidentified is True


def test_external_token_checks(external, idp_key):
    now = int(time.time())
    refused(external, f"Bearer {idp_token(idp_key, aud='someone-else')}", match="aud must be trial-fhir")
    refused(external, f"Bearer {idp_token(idp_key, exp=now - 120)}", match="expired")
    refused(external, f"Bearer {idp_token(idp_key, exp=None)}", match="no exp")
    refused(external, f"Bearer {idp_token(idp_key, nbf=now + 600)}", match="not valid yet")
    refused(external, f"Bearer {idp_token(idp_key, iss='https://evil.example.org')}", match="not trusted")
    other = new_key("RS384", "idp-1")  # the issuer's kid, another key
    refused(external, f"Bearer {idp_token(other)}", match="signature")
    refused(external, f"Bearer {idp_token(new_key('RS384', 'idp-2'))}", match="signing key is unknown")
    hs = jwt.encode({"alg": "HS256", "kid": "idp-1"}, {"iss": IDP, "aud": "trial-fhir", "exp": now + 60},
                    OctKey.import_key("s" * 32), algorithms=["HS256"])
    refused(external, f"Bearer {hs}", match="asymmetric")


def test_external_leeway(external, idp_key):
    now = int(time.time())
    run(external.authenticate(f"Bearer {idp_token(idp_key, exp=now - 10, nbf=now + 10)}", BASE))


def test_external_issuer_key_rotation_is_picked_up(external, idp_key, monkeypatch):
    run(external.authenticate(f"Bearer {idp_token(idp_key)}", BASE))
    rotated = new_key("ES384", "idp-2")
    respx.get(IDP_JWKS).mock(return_value=httpx.Response(200, json=public_jwks(idp_key, rotated)))
    external.remote.min_refetch_s = 0
    caller = run(external.authenticate(f"Bearer {idp_token(rotated, alg='ES384')}", BASE))
    assert caller.issuer == IDP


def test_own_keys_sign_only_access_tokens(own, engine):
    """A JWT signed with the server's key but not typed at+jwt is not taken for an access token."""
    from service.auth import keys
    client_id, _, authenticator = own
    server = keys.current_key(engine)
    now = int(time.time())
    other = jwt.encode({"alg": "ES384", "kid": server.kid, "typ": "JWT"},
                       {"iss": BASE, "aud": BASE, "sub": client_id, "exp": now + 60}, server.key, algorithms=["ES384"])
    refused(authenticator, f"Bearer {other}", match="typ must be at+jwt")


def test_the_token_cache_is_bounded(client, engine, monkeypatch):
    monkeypatch.setattr(verify, "CACHE_SIZE", 2)
    client_id, key = register_client(engine, "system/Observation.rs")
    authenticator = Authenticator(engine, client.app.state.settings)
    for _ in range(4):
        run(authenticator.authenticate(f"Bearer {get_token(client, client_id, key, 'system/Observation.rs')}", BASE))
    assert len(authenticator._verified) == 2


def test_a_trusted_issuer_needs_a_jwks_url(database_url):
    from service.db import make_engine
    settings = Settings(database_url=database_url, _env_file=None, trusted_issuers=[{"issuer": IDP}])
    with pytest.raises(ValueError, match="jwks_url"):
        Authenticator(make_engine(database_url), settings)
