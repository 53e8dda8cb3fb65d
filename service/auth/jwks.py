"""What both sides of the authorisation server share: reading a JWT's header and claims before its signature is
checked (to know whose key to check it with), choosing that key from a JWKS, and JWKS fetched from a URL (a
client's `jwks_url`, a trusted issuer's keys), cached no longer than their `Cache-Control` allows.
"""

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key

#: what a key of each algorithm family must be (select by `kid` + `kty`, as SMART says)
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
#: private members of RSA and EC JWKs (RFC 7518 §6), and the symmetric key's `k`
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
DEFAULT_MAX_AGE_S = 300.0  # a JWKS served without Cache-Control is kept this long
MIN_REFETCH_S = 10.0  # an unknown kid refetches a cached JWKS at most this often (per URL)
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)")


class KeyProblem(ValueError):
    """No usable key: the message says why (never the token itself)."""


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise KeyProblem(f"the token's {what} is not base64url JSON") from None
    if not isinstance(data, dict):
        raise KeyProblem(f"the token's {what} is not a JSON object")
    return data


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, not yet verified: only for choosing the key to verify it with."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise KeyProblem("not a signed JWT (three base64url parts separated by dots)")
    return _b64json(parts[0], "header"), _b64json(parts[1], "claims")


def select_key(keys: Iterable[Mapping[str, Any]], kid: object, alg: str) -> Key:
    """The one key of a JWKS with this `kid` and the key type `alg` needs; KeyProblem when none or several match."""
    if not isinstance(kid, str) or not kid:
        raise KeyProblem("the token's header has no kid")
    kty = KEY_TYPES.get(alg[:2])
    found = [k for k in keys if k.get("kid") == kid and k.get("kty") == kty]
    if not found:
        raise KeyProblem(f"no {kty} key with kid {kid!r}")
    if len(found) > 1:
        raise KeyProblem(f"several {kty} keys with kid {kid!r}")
    try:
        return import_key(dict(found[0]))
    except (JoseError, ValueError) as exc:
        raise KeyProblem(f"the key with kid {kid!r} is unusable: {exc}") from None


def check_public_jwks(data: object) -> list[dict[str, Any]]:
    """The keys of a client's JWKS, refused (ValueError) unless it is `{"keys": [...]}` of public RSA or EC keys,
    each with a `kid`, no two alike in (kid, kty). Private key material is refused: a client keeps its private key."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError('a JWKS is a JSON object {"keys": [...]} with at least one key')
    seen = set()
    for i, key in enumerate(data["keys"]):
        if not isinstance(key, dict):
            raise ValueError(f"key {i} is not a JSON object")
        if PRIVATE_MEMBERS & key.keys():
            raise ValueError(f"key {i} holds private key material ({', '.join(sorted(PRIVATE_MEMBERS & key.keys()))}):"
                             " register the public key only")
        if key.get("kty") not in ("RSA", "EC"):
            raise ValueError(f"key {i} has kty {key.get('kty')!r}: only RSA (RS384) and EC (ES384) keys are accepted")
        if not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValueError(f"key {i} has no kid")
        if (key["kid"], key["kty"]) in seen:
            raise ValueError(f"two {key['kty']} keys have kid {key['kid']!r}")
        seen.add((key["kid"], key["kty"]))
        try:
            import_key(key)
        except (JoseError, ValueError) as exc:
            raise ValueError(f"key {i} ({key['kid']}) is not a valid JWK: {exc}") from None
    return list(data["keys"])


def max_age(cache_control: str | None) -> float:
    """How long a response may be kept, from its Cache-Control: no-store/no-cache 0, max-age as given, and
    DEFAULT_MAX_AGE_S when the header says nothing."""
    if cache_control is None:
        return DEFAULT_MAX_AGE_S
    value = cache_control.lower()
    if "no-store" in value or "no-cache" in value:
        return 0.0
    m = _MAX_AGE.search(value)
    return float(m.group(1)) if m else DEFAULT_MAX_AGE_S


@dataclass
class _Cached:
    keys: list[dict[str, Any]]
    fetched_at: float
    expires_at: float


class RemoteJwks:
    """JWKS fetched with httpx from their URLs, each kept until its Cache-Control expiry. A kid not in a cached
    JWKS refetches it (the key may just have been rotated), at most once per `min_refetch_s` per URL, so a flood of
    tokens with made-up kids can't make us hammer the key server."""

    def __init__(self, *, timeout_s: float = 5.0, min_refetch_s: float = MIN_REFETCH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.min_refetch_s = min_refetch_s
        self.clock = clock
        self._cache: dict[str, _Cached] = {}

    async def _fetch(self, url: str) -> _Cached:
        try:
            # a client per fetch: fetches are rare, and a client made on one event loop can't be used on another
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as http:
                response = await http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise KeyProblem(f"the JWKS at {url} could not be fetched ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise KeyProblem(f"the JWKS at {url} answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise KeyProblem(f"the JWKS at {url} is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise KeyProblem(f'the JWKS at {url} is not {{"keys": [...]}}')
        now = self.clock()
        cached = _Cached([k for k in data["keys"] if isinstance(k, dict)], now,
                         now + max_age(response.headers.get("cache-control")))
        self._cache[url] = cached
        return cached

    async def key(self, url: str, kid: object, alg: str) -> Key:
        """The key for a token's (kid, alg) from the JWKS at `url`."""
        now = self.clock()
        cached = self._cache.get(url)
        if cached is None or now >= cached.expires_at:
            cached = await self._fetch(url)
        try:
            return select_key(cached.keys, kid, alg)
        except KeyProblem:
            if self.clock() - cached.fetched_at < self.min_refetch_s:
                raise
        return select_key((await self._fetch(url)).keys, kid, alg)
