"""The token endpoint's work (SMART Backend Services, client-confidential-asymmetric): check a client's signed
assertion, grant the scopes it may have and sign an access token.

Errors: every failure to authenticate the client (a malformed or badly signed assertion, an unknown or disabled
client, a wrong `aud`, `exp` missing, past or more than 5 minutes ahead, a `jti` missing or already seen) is
`invalid_client` (401, RFC 6749 §5.2), as SMART says: "if an error is encountered during the authentication
process, the server SHALL respond with an invalid_client error". A replayed assertion is one of those, so it is
`invalid_client` too, never `invalid_grant`. A scope this server can't parse, or none left once narrowed to what
the client registered, is `invalid_scope`; a missing or repeated parameter `invalid_request`; another grant type
`unsupported_grant_type` (all 400).

The access token is an RFC 9068 JWT (`typ: at+jwt`) signed ES384 with the server's current key: `iss` and `aud` the
FHIR base URL, `sub` and `client_id` the client, `scope`, `iat`, `exp`, `jti`, and two private claims read from the
registration when the token is issued: `studies` (the ResearchStudy ids it may see; absent: every study) and
`deidentified`.
"""

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from anyio.to_thread import run_sync
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.auth import keys
from service.auth.clients import Client, get_client
from service.auth.jwks import KeyProblem, RemoteJwks, select_key, unverified
from service.auth.models import SeenAssertionRecord
from service.auth.scopes import Scope, ScopeError, narrow, parse_scopes, scope_string
from service.auth.urls import AuthUrls
from service.db import write_session
from service.settings import Settings
from service.store.models import table_of

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")  # SMART's two; joserfc refuses them unless named
MAX_ASSERTION_LIFETIME_S = 300
MAX_JTI_LENGTH = 255
SEEN = table_of(SeenAssertionRecord)


class OAuthError(Exception):
    """An OAuth error response (RFC 6749 §5.2): `invalid_client` is a 401, the others 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    @property
    def status_code(self) -> int:
        return 401 if self.error == "invalid_client" else 400


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str

    def response(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in,
                "scope": self.scope}


def _refuse(description: str) -> OAuthError:
    return OAuthError("invalid_client", description)


class TokenIssuer:
    """Answers token requests for the clients registered in the database at `engine`."""

    def __init__(self, engine: Engine, settings: Settings, remote: RemoteJwks | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.remote = remote or RemoteJwks()
        self.clock = clock

    async def issue(self, form: Mapping[str, list[str]], urls: AuthUrls) -> IssuedToken:
        """An access token for a token request's form parameters (each name → its values), or OAuthError."""
        params = {}
        for name in ("grant_type", "client_assertion_type", "client_assertion", "scope"):
            values = form.get(name, [])
            if len(values) > 1:
                raise OAuthError("invalid_request", f"the parameter {name} is repeated")
            if not values or not values[0]:
                raise OAuthError("invalid_request", f"the parameter {name} is missing")
            params[name] = values[0]
        if params["grant_type"] != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", f"only grant_type={GRANT_TYPE} is supported")
        if params["client_assertion_type"] != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        client, claims = await self.authenticate(params["client_assertion"], urls)
        if form.get("client_id") and form["client_id"] != [client.client_id]:  # optional; must agree if sent
            raise _refuse("client_id does not match the assertion's iss")
        try:
            requested = parse_scopes(params["scope"])
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        granted = narrow(requested, parse_scopes(client.scope))
        if not granted:
            raise OAuthError("invalid_scope", "none of the requested scopes is registered for this client")
        return await run_sync(self.sign, client, granted, urls)  # reads (or makes) the key: off the loop

    async def authenticate(self, assertion: str, urls: AuthUrls) -> tuple[Client, dict[str, Any]]:
        """The client a signed assertion (RFC 7523) authenticates, and its claims; OAuthError(invalid_client)."""
        try:
            header, unchecked = unverified(assertion)
        except KeyProblem as exc:
            raise _refuse(f"client_assertion: {exc}") from None
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise _refuse(f"client_assertion: alg {alg!r} is not accepted (use RS384 or ES384)")
        client_id = unchecked.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise _refuse("client_assertion: iss (the client id) is missing")
        client = await run_sync(get_client, self.engine, client_id)
        if client is None:
            raise _refuse("client_assertion: unknown client (iss)")
        if client.disabled:
            raise _refuse("the client is disabled")
        key = await self._client_key(client, header.get("kid"), alg)
        try:
            claims = dict(jwt.decode(assertion, key, algorithms=[alg]).claims)
        except (JoseError, ValueError) as exc:
            raise _refuse(f"client_assertion: the signature does not verify ({type(exc).__name__})") from None
        self._check_claims(claims, client.client_id, urls)
        await run_sync(self._remember_jti, client.client_id, claims["jti"], claims["exp"])
        return client, claims

    async def _client_key(self, client: Client, kid: object, alg: str) -> Key:
        try:
            if client.jwks is not None:
                return select_key(client.jwks["keys"], kid, alg)
            assert client.jwks_url is not None  # registration requires one of the two
            return await self.remote.key(client.jwks_url, kid, alg)
        except KeyProblem as exc:
            raise _refuse(f"client_assertion: {exc}") from None

    def _check_claims(self, claims: dict[str, Any], client_id: str, urls: AuthUrls) -> None:
        leeway = self.settings.auth_leeway_s
        now = self.clock()
        if claims.get("sub") != client_id:
            raise _refuse("client_assertion: sub must equal iss (the client id)")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        # the token URL, as SMART says; the issuer identifier too, as RFC 7523 §3 allows
        accepted = {urls.token, urls.issuer}
        if not any(isinstance(a, str) and a.rstrip("/") in accepted for a in auds):
            raise _refuse(f"client_assertion: aud must be the token URL {urls.token}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _refuse("client_assertion: exp is missing")
        if exp < now - leeway:
            raise _refuse("client_assertion: expired (exp)")
        if exp > now + MAX_ASSERTION_LIFETIME_S + leeway:
            raise _refuse("client_assertion: exp is more than 5 minutes ahead")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + leeway:
            raise _refuse("client_assertion: not valid yet (nbf)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise _refuse(f"client_assertion: jti is missing (or longer than {MAX_JTI_LENGTH} characters)")

    def _remember_jti(self, client_id: str, jti: str, exp: float) -> None:
        """Record the assertion's jti until it expires (plus the leeway); a jti seen before is a replay. Expired
        ones are purged on the way (the token endpoint is far from a hot path)."""
        now = datetime.now(UTC)
        expires = datetime.fromtimestamp(exp + self.settings.auth_leeway_s, UTC)
        try:
            with write_session(self.engine) as session:
                session.execute(delete(SEEN).where(SEEN.c.expires_at < now))
                session.execute(SEEN.insert().values(client_id=client_id, jti=jti, expires_at=expires))
                session.commit()
        except IntegrityError:
            raise _refuse("client_assertion: this jti was already used (replayed assertion)") from None

    def sign(self, client: Client, granted: tuple[Scope, ...], urls: AuthUrls) -> IssuedToken:
        """A signed access token for `client` with the scopes granted."""
        server_key = keys.current_key(self.engine)
        now = int(self.clock())
        lifetime = self.settings.token_lifetime_s
        scope = scope_string(granted)
        claims: dict[str, Any] = {"iss": urls.issuer, "sub": client.client_id, "aud": urls.issuer,
                                  "client_id": client.client_id, "scope": scope, "iat": now, "exp": now + lifetime,
                                  "jti": secrets.token_urlsafe(16), "deidentified": client.deidentified}
        if client.studies:
            claims["studies"] = list(client.studies)
        header = {"alg": keys.ALGORITHM, "typ": "at+jwt", "kid": server_key.kid}
        token = jwt.encode(header, claims, server_key.key, algorithms=[keys.ALGORITHM])
        return IssuedToken(token, lifetime, scope)

