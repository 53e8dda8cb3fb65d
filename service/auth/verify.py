"""Who a request's access token says the caller is: `Authenticator.authenticate(authorization, base_url)`.

Accepted tokens are this server's own (service/auth/token.py: ES384, `typ: at+jwt`, `iss` and `aud` the FHIR base)
and those of the external issuers in TRIAL_FHIR_TRUSTED_ISSUERS (`iss` one of theirs, `aud` their configured
audience, else the FHIR base; signed with an asymmetric algorithm, keys from their `jwks_url`). `none` and the
HMAC algorithms are refused for both: a shared-secret signature proves nothing about who signed.

What a token grants: its `scope` claim (space-separated) or `scp` (a string or a list), scopes this server can't
parse being ignored (an external issuer's token carries others'). The private claims `studies` (ResearchStudy ids)
and `deidentified` say which studies the client sees and whether de-identified; a token without them (every
external token, unless its issuer is set up to add them) sees every study, identified.

Cost: the hot path (thousands of searches a second) must not pay a signature check per request, so a token is
verified once and its Caller kept until its `exp` (up to `CACHE_SIZE` tokens, least recently used dropped). Own
tokens are re-checked against their client's `disabled` flag, itself cached `DISABLED_TTL_S`, so disabling a client
stops its tokens within seconds without a database read per request.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anyio.to_thread import run_sync
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key
from sqlalchemy.engine import Engine

from service.auth import keys
from service.auth.clients import is_disabled
from service.auth.jwks import KeyProblem, RemoteJwks, unverified
from service.auth.scopes import Scope, ScopeError, parse_scope
from service.core.context import Caller
from service.errors import Unauthorized
from service.settings import Settings

CACHE_SIZE = 10_000
DISABLED_TTL_S = 5.0
OWN_KEYS_REFRESH_S = 1.0  # an unknown kid on an own token re-reads the keys at most this often
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@dataclass(frozen=True, slots=True)
class _Verified:
    caller: Caller
    base_url: str  # the FHIR base the token was checked against (its aud, for own tokens also its iss), as given
    own: bool
    valid_until: float  # exp + leeway


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    issuer: str
    jwks_url: str
    audience: str | None


def granted_scopes(claims: dict[str, Any]) -> tuple[Scope, ...]:
    """The scopes a token carries that this server understands (the others are ignored, not fatal)."""
    raw = claims.get("scope", claims.get("scp"))
    names = raw.split() if isinstance(raw, str) else [s for s in raw if isinstance(s, str)] \
        if isinstance(raw, list) else []
    scopes: list[Scope] = []
    for name in names:
        try:
            scope = parse_scope(name)
        except ScopeError:
            continue
        if scope not in scopes:
            scopes.append(scope)
    return tuple(scopes)


class Authenticator:
    def __init__(self, engine: Engine, settings: Settings, remote: RemoteJwks | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.settings = settings
        self.remote = remote or RemoteJwks()
        self.clock = clock
        self.issuers: dict[str, TrustedIssuer] = {}
        for entry in settings.trusted_issuers:
            if not entry.get("issuer") or not entry.get("jwks_url"):
                raise ValueError("TRIAL_FHIR_TRUSTED_ISSUERS: each issuer needs an 'issuer' and a 'jwks_url'")
            issuer = entry["issuer"].rstrip("/")
            self.issuers[issuer] = TrustedIssuer(issuer, entry["jwks_url"], entry.get("audience"))
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._disabled: dict[str, tuple[bool, float]] = {}  # client id -> (disabled?, when read; monotonic)
        self._own_keys: dict[str, Key] = {}
        self._own_keys_read = float("-inf")
        self._own_keys_lock = asyncio.Lock()

    async def authenticate(self, authorization: str | None, base_url: str) -> Caller:
        """The Caller of a request's `Authorization` header; Unauthorized naming what is wrong (never the token)."""
        # the hot path: a header seen before is one dict look-up (keyed by the header as sent, so nothing is parsed
        # or copied), one clock read and, for own tokens, the cached disabled flag
        hit = self._verified.get(authorization) if authorization else None
        if hit is not None and hit.base_url == base_url and authorization:
            if self.clock() > hit.valid_until:
                self._verified.pop(authorization, None)
                raise Unauthorized("The access token has expired")
            try:
                self._verified.move_to_end(authorization)
            except KeyError:  # dropped meanwhile by another request's insertion: it stays verified for this one
                pass
            if hit.own:
                known = self._disabled.get(hit.caller.name)
                if known is None or known[0] or time.monotonic() - known[1] >= DISABLED_TTL_S:
                    await self._check_enabled(hit.caller.name)
            return hit.caller
        if not authorization:
            raise Unauthorized("No access token: send Authorization: Bearer <token> (see "
                               f"{base_url.rstrip('/')}/.well-known/smart-configuration)")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("The Authorization header must be 'Bearer <access token>'")
        verified = await self._verify(token, base_url)
        if verified.own:
            await self._check_enabled(verified.caller.name)
        self._verified[authorization] = verified
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return verified.caller

    async def _verify(self, token: str, base_url: str) -> _Verified:
        base = base_url.rstrip("/")
        try:
            header, unchecked = unverified(token)
        except KeyProblem as exc:
            raise Unauthorized(f"The access token is malformed: {exc}") from None
        alg = header.get("alg")
        iss = unchecked.get("iss")
        issuer = iss.rstrip("/") if isinstance(iss, str) else None
        own = issuer == base
        trusted = self.issuers.get(issuer) if issuer and not own else None
        if not own and trusted is None:
            raise Unauthorized(f"The access token's issuer is not trusted here (iss {iss!r:.120}; this server issues "
                               f"tokens as {base})")
        if own and alg != keys.ALGORITHM:
            raise Unauthorized(f"The access token's alg {alg!r} is not the one this server signs with")
        if not own and alg not in EXTERNAL_ALGORITHMS:
            raise Unauthorized(f"The access token's alg {alg!r} is not accepted (asymmetric signatures only)")
        if own and str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise Unauthorized("The token is not an access token (typ must be at+jwt)")
        assert isinstance(alg, str)
        try:
            if trusted is None:
                key = await self._own_key(header.get("kid"))
            else:
                key = await self.remote.key(trusted.jwks_url, header.get("kid"), alg)
        except KeyProblem as exc:
            raise Unauthorized(f"The access token's signing key is unknown: {exc}") from None
        try:
            claims = dict(jwt.decode(token, key, algorithms=[alg]).claims)
        except (JoseError, ValueError) as exc:
            raise Unauthorized(f"The access token's signature does not verify ({type(exc).__name__})") from None
        audience = trusted.audience if trusted is not None and trusted.audience else base
        self._check_times_and_audience(claims, audience)
        caller = self._caller(claims, issuer or "", own)
        return _Verified(caller, base_url, own, float(claims["exp"]) + self.settings.auth_leeway_s)

    def _check_times_and_audience(self, claims: dict[str, Any], audience: str) -> None:
        now, leeway = self.clock(), self.settings.auth_leeway_s
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise Unauthorized("The access token has no exp")
        if now > exp + leeway:
            raise Unauthorized("The access token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + leeway:
            raise Unauthorized("The access token is not valid yet (nbf)")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.rstrip("/") == audience.rstrip("/") for a in auds):
            raise Unauthorized(f"The access token is not meant for this server (aud must be {audience})")

    def _caller(self, claims: dict[str, Any], issuer: str, own: bool) -> Caller:
        name = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "unknown"
        studies = claims.get("studies")
        return Caller(name=str(name), scopes=granted_scopes(claims),
                      studies=frozenset(str(s) for s in studies) if isinstance(studies, list) else None,
                      deidentified=claims.get("deidentified") is True, issuer=issuer,
                      expires_at=float(claims["exp"]))

    async def _own_key(self, kid: object) -> Key:
        """One of this server's keys by kid; the keys are read again (rate-limited) when the kid is unknown."""
        if isinstance(kid, str) and kid in self._own_keys:
            return self._own_keys[kid]
        # one read at a time: requests arriving together at a fresh worker wait for the first one's read instead of
        # finding the rate limit spent and no keys yet (they were answered 401)
        async with self._own_keys_lock:
            if isinstance(kid, str) and kid in self._own_keys:
                return self._own_keys[kid]
            now = time.monotonic()
            if now - self._own_keys_read >= OWN_KEYS_REFRESH_S:
                keep = self.settings.token_lifetime_s + self.settings.auth_leeway_s
                published = await run_sync(lambda: keys.published_keys(self.engine, keep, create=False))
                self._own_keys = {k.kid: k.key for k in published}
                self._own_keys_read = time.monotonic()
        if not isinstance(kid, str) or kid not in self._own_keys:
            raise KeyProblem(f"no key of this server has kid {kid!r}")
        return self._own_keys[kid]

    async def _check_enabled(self, client_id: str) -> None:
        now = time.monotonic()
        known = self._disabled.get(client_id)
        if known is None or now - known[1] >= DISABLED_TTL_S:
            known = (await run_sync(is_disabled, self.engine, client_id), now)
            self._disabled[client_id] = known
        if known[0]:
            raise Unauthorized("The client of this access token is disabled (or no longer registered)")
