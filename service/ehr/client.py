"""Talking to an upstream FHIR R4 server (an EHR): `EhrClient` around an injected `httpx.AsyncClient`.

- **Auth** (`Auth`): none, a static bearer, or SMART Backend Services (`SmartAuth`: client credentials with our
  signed assertion through authlib's `AsyncOAuth2Client` and `SmartAssertion`, a `PrivateKeyJWT` that signs each
  assertion with `exp` 300 s ahead and a fresh `jti`). A token is fetched before it expires (30 s margin), and
  once more on a 401 (the request is sent again once). The token goes only to the upstream's own host: a file
  URL of a Bulk Data manifest gets it only when the manifest says `requiresAccessToken`, and httpx drops
  `Authorization` when a redirect leads to another host.
- **Retries** (stamina, exponential backoff with jitter): idempotent requests (GET, DELETE) on a network error,
  429 and 5xx; a `Retry-After` (seconds or an HTTP date) sets the wait, up to `wait_cap_s`. The Bulk Data kick-off
  is not retried (a retry could start a second export upstream); the export's status is polled by our own loop
  (`wait_for_export`: `Retry-After` honoured, slower after a 429, each wait capped, the whole wait bounded).
- **Errors** (`UpstreamError`) say what failed in our words: the method, the URL's path and the status, never a
  token, a secret or a response body (it may hold patient data).
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import stamina
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

log = logging.getLogger("trial_fhir.ehr")

FHIR_JSON = "application/fhir+json"
RETRYABLE = frozenset({429, 500, 502, 503, 504})
ASSERTION_LIFETIME_S = 300  # SMART Backend Services: exp at most five minutes ahead
TOKEN_MARGIN_S = 30.0  # a token this close to its expiry is renewed before use
MIN_POLL_S = 1.0  # the shortest wait between two polls of an export's status


class UpstreamError(Exception):
    """The upstream failed a request (after the retries it deserved): said in our words, no secret, no body."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ExportRefused(UpstreamError):
    """The Bulk Data kick-off was not accepted (its status: 404 or 410 when the Group is not, or no longer, there)."""


class _Retry(Exception):
    """A retryable answer (429, 5xx): `wait_s` from its Retry-After, when it had one."""

    def __init__(self, response: httpx.Response, wait_s: float | None) -> None:
        super().__init__(f"{response.status_code}")
        self.response = response
        self.wait_s = wait_s


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A `Retry-After` header in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when absent or
    unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def where(url: str) -> str:
    """A URL as our messages name it: host and path, never the query (it may hold identifiers)."""
    parts = urlsplit(url)
    return f"{parts.netloc}{parts.path}"


# -- auth -----------------------------------------------------------------------------------------------------

class Auth:
    """No authentication: the base of the others."""

    async def headers(self, *, renew: bool = False) -> dict[str, str]:
        return {}

    @property
    def renewable(self) -> bool:
        """Can a 401 be answered by getting a new token?"""
        return False

    async def aclose(self) -> None:
        return None


class BearerAuth(Auth):
    """A static bearer token (a secret: never printed, never logged)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def headers(self, *, renew: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def __repr__(self) -> str:
        return "BearerAuth(***)"


class SmartAssertion(PrivateKeyJWT):
    """authlib's `private_key_jwt` as SMART Backend Services wants it: `exp` at most 300 s ahead (authlib signs
    3600 s) and a fresh `jti` and header for every assertion (authlib keeps the `claims` dict it is given and
    would send the same `jti` again)."""

    def __init__(self, token_endpoint: str, key: RSAKey | ECKey, alg: str) -> None:
        super().__init__(token_endpoint, alg=alg)
        self.key = key

    def sign(self, auth: Any, token_endpoint: str) -> str:
        header = {"kid": self.key.kid, "typ": "JWT"} if self.key.kid else {"typ": "JWT"}
        # no `claims`: private_key_jwt_sign makes a fresh dict with a fresh jti (generate_token) every call
        return private_key_jwt_sign(self.key, client_id=auth.client_id, token_endpoint=token_endpoint,
                                    alg=self.alg, header=header, expires_in=ASSERTION_LIFETIME_S)


def load_private_key(path: str | Path) -> RSAKey | ECKey:
    """Our private key for SMART assertions: a JWK (JSON, with its `kid`) or a PEM file. Its `kid` is the JWK's,
    else the key's thumbprint."""
    raw = Path(path).read_bytes()
    key: Any
    if raw.lstrip().startswith(b"{"):
        key = JWKRegistry.import_key(json.loads(raw))
    else:
        try:
            key = RSAKey.import_key(raw)
        except ValueError:
            key = ECKey.import_key(raw)
    if not isinstance(key, (RSAKey, ECKey)) or not key.is_private:
        raise ValueError(f"{path}: not a private RSA or EC key")
    if not key.kid:
        key.ensure_kid()
    return key


def assertion_alg(key: RSAKey | ECKey) -> str:
    return "RS384" if isinstance(key, RSAKey) else "ES384"


class _TokenClient(AsyncOAuth2Client):
    """authlib's OAuth 2 client, sending its token request through our injected `httpx.AsyncClient` (authlib 1.9
    sends through httpx2 when it is installed: a second HTTP stack, with its own timeouts, that respx can't mock)."""

    def __init__(self, http: httpx.AsyncClient, client_id: str, assertion: SmartAssertion) -> None:
        super().__init__(client_id, client_secret=assertion.key, token_endpoint_auth_method=assertion)
        self._http = http

    async def _fetch_token(self, url: str, body: str = "", headers: Any = None, auth: Any = None,
                           method: str = "POST", **kwargs: Any) -> Any:
        url, prepared, content = auth.prepare("POST", url, dict(headers or {}), body)  # signs the assertion
        response = await self._http.post(url, content=content, headers=prepared)
        for hook in self.compliance_hook["access_token_response"]:
            response = hook(response)
        return self.parse_response_token(response)


class SmartAuth(Auth):
    """SMART Backend Services: client credentials with our signed assertion, the token kept until 30 s before
    it expires (or a 401 says it is no longer good)."""

    def __init__(self, http: httpx.AsyncClient, token_url: str, client_id: str, key: RSAKey | ECKey, *,
                 scope: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.token_url = token_url
        self.scope = scope
        self._clock = clock
        self._oauth = _TokenClient(http, client_id, SmartAssertion(token_url, key, assertion_alg(key)))
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens fetched so far (status, tests)

    @property
    def renewable(self) -> bool:
        return True

    async def headers(self, *, renew: bool = False) -> dict[str, str]:
        async with self._lock:
            if renew or self._token is None or self._clock() >= self._expires_at - TOKEN_MARGIN_S:
                await self._fetch()
        return {"Authorization": f"Bearer {self._token}"}

    async def _fetch(self) -> None:
        params: dict[str, Any] = {"grant_type": "client_credentials"}
        if self.scope:
            params["scope"] = self.scope
        try:
            token = await self._oauth.fetch_token(self.token_url, **params)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the token endpoint {where(self.token_url)} did not answer "
                                f"({type(exc).__name__})") from None
        except Exception as exc:  # authlib's OAuth errors: their `error` code, never the assertion
            raise UpstreamError(f"the token endpoint {where(self.token_url)} refused our client credentials "
                                f"({getattr(exc, 'error', type(exc).__name__)})") from None
        self._token = token["access_token"]
        self._expires_at = self._clock() + float(token.get("expires_in") or ASSERTION_LIFETIME_S)
        self.fetched += 1

    async def aclose(self) -> None:
        await self._oauth.aclose()

    def __repr__(self) -> str:
        return f"SmartAuth({where(self.token_url)}, ***)"


# -- the client -------------------------------------------------------------------------------------------------

@dataclass
class Manifest:
    """A completed Bulk Data export: its `transactionTime` (the next `_since`), whether its files need our token,
    and its files by type (`output`, `error`, `deleted`)."""

    transaction_time: str
    requires_token: bool
    output: list[tuple[str, str]]
    error: list[tuple[str, str]]
    deleted: list[tuple[str, str]]


class EhrClient:
    """One upstream FHIR server at `base_url`, through `http` (the caller owns it and closes it)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, auth: Auth | None = None, *, attempts: int = 5,
                 wait_max_s: float = 30.0, wait_cap_s: float = 120.0, export_max_s: float = 3600.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.http = http
        self.base = base_url.rstrip("/")
        self.auth = auth or Auth()
        self.attempts = attempts
        self.wait_max_s = wait_max_s
        self.wait_cap_s = wait_cap_s  # the longest we wait at once, whatever Retry-After asks
        self.export_max_s = export_max_s  # the longest an export may take to complete
        self._sleep = sleep
        self.requests = 0
        self.waits: list[float] = []  # the export status polls' waits (status, tests)

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base}/{path.lstrip('/')}"

    def _own(self, url: str) -> bool:
        return urlsplit(url).netloc == urlsplit(self.base).netloc

    def _backoff(self, exc: Exception) -> bool | float:
        """stamina's hook: retry network errors and retryable answers; a Retry-After sets the wait (capped)."""
        if isinstance(exc, _Retry):
            return True if exc.wait_s is None else min(exc.wait_s, self.wait_cap_s)
        return isinstance(exc, httpx.TransportError)

    async def _send(self, method: str, url: str, *, params: Any = None, headers: dict[str, str] | None = None,
                    token: bool = True, retry: bool = True) -> httpx.Response:
        """One request (retried when idempotent and `retry`), with our token when `token` and the URL is the
        upstream's own; a 401 gets a new token and the request once more."""
        url = self.url(url)
        send_token = token and self._own(url)

        async def once(renew: bool = False) -> httpx.Response:
            extra = await self.auth.headers(renew=renew) if send_token else {}
            self.requests += 1
            response = await self.http.request(method, url, params=params, headers={**(headers or {}), **extra},
                                               follow_redirects=True)
            if retry and response.status_code in RETRYABLE:
                await response.aread()
                raise _Retry(response, retry_after_s(response.headers.get("Retry-After")))
            return response

        async def attempt() -> httpx.Response:
            response = await once()
            if response.status_code == 401 and send_token and self.auth.renewable:
                log.info("401 from %s: getting a new token and trying once more", where(url))
                response = await once(renew=True)
            return response

        try:
            if not retry:
                return await attempt()
            async for trial in stamina.retry_context(on=self._backoff, attempts=self.attempts, timeout=None,
                                                     wait_max=self.wait_max_s):
                with trial:
                    return await attempt()
        except _Retry as exc:
            raise UpstreamError(f"{method} {where(url)} answered {exc.response.status_code} "
                                f"after {self.attempts} attempts", exc.response.status_code) from None
        except httpx.TransportError as exc:
            raise UpstreamError(f"{method} {where(url)} failed: {type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover  (stamina either returns or raises)

    async def get_json(self, url: str, params: Any = None) -> dict[str, Any]:
        response = await self._send("GET", url, params=params, headers={"Accept": FHIR_JSON})
        if response.status_code != 200:
            raise UpstreamError(f"GET {where(str(response.url))} answered {response.status_code}",
                                response.status_code)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError(f"GET {where(str(response.url))} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"GET {where(str(response.url))} answered JSON that is not a resource")
        return data

    async def capability(self) -> dict[str, Any]:
        return await self.get_json("metadata")

    async def read_status(self, resource_type: str, id: str) -> int:
        """The status of a read of one resource (200, 404, 410, …): how a deletion upstream shows."""
        response = await self._send("GET", f"{resource_type}/{id}", headers={"Accept": FHIR_JSON})
        return response.status_code

    async def search(self, resource_type: str, params: list[tuple[str, str]]) -> AsyncIterator[list[dict[str, Any]]]:
        """The matches of a search (entries in `search.mode` match, or without a mode), page by page, following the
        `next` links (resolved against the upstream's base when relative)."""
        page: dict[str, Any] | None = await self.get_json(resource_type, params)
        while page is not None:
            if page.get("resourceType") != "Bundle":
                raise UpstreamError(f"a search of {resource_type} answered a {page.get('resourceType')}, "
                                    "not a Bundle")
            yield [e["resource"] for e in page.get("entry") or []
                   if isinstance(e.get("resource"), dict) and (e.get("search") or {}).get("mode", "match") == "match"]
            following = next((link.get("url") for link in page.get("link") or [] if link.get("relation") == "next"),
                             None)
            page = await self.get_json(urljoin(self.base + "/", following)) if following else None

    async def find_patient(self, identifiers: list[tuple[str, str]]) -> tuple[str | None, int]:
        """The upstream id of the Patient one of `identifiers` (system, value) names, tried in turn; with how many
        matched the identifier that answered (0: none found, 2+: ambiguous, not used)."""
        for system, value in identifiers:
            found: list[str] = []
            async for page in self.search("Patient", [("identifier", f"{system}|{value}"), ("_elements", "id")]):
                found += [r["id"] for r in page if r.get("resourceType") == "Patient" and r.get("id")]
            if len(found) == 1:
                return found[0], 1
            if found:
                return None, len(found)
        return None, 0

    async def groups_with(self, upstream_patient: str) -> list[dict[str, Any]]:
        """`Group?member=Patient/<id>`: the Groups the upstream lists for one of its Patients. What a Group holds is
        for the caller to check (`group_members`): a server that ignores `member` lists every Group."""
        found: list[dict[str, Any]] = []
        async for page in self.search("Group", [("member", f"Patient/{upstream_patient}")]):
            found += [g for g in page if g.get("resourceType") == "Group" and isinstance(g.get("id"), str)]
        return found

    async def read_group(self, group_id: str) -> dict[str, Any] | None:
        """`Group/{id}`; None when the upstream answers 404 or 410 (no such Group, or no longer)."""
        try:
            group = await self.get_json(f"Group/{group_id}")
        except UpstreamError as exc:
            if exc.status in (404, 410):
                return None
            raise
        return group if group.get("resourceType") == "Group" else None

    # -- Bulk Data --------------------------------------------------------------------------------------------

    async def kick_off_export(self, group_id: str, types: list[str], since: str | None) -> str:
        """`GET Group/{id}/$export` with `Prefer: respond-async`: the status URL (`Content-Location`). Not retried."""
        params = [("_type", ",".join(types))] + ([("_since", since)] if since else [])
        response = await self._send("GET", f"Group/{group_id}/$export", params=params, retry=False,
                                    headers={"Accept": FHIR_JSON, "Prefer": "respond-async"})
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise ExportRefused(f"the export kick-off at {where(str(response.url))} answered "
                                f"{response.status_code}" + ("" if response.status_code != 202 else
                                                              " without Content-Location"), response.status_code)
        return urljoin(self.base + "/", location)

    async def wait_for_export(self, status_url: str, *, first_wait_s: float = 1.0,
                              keep: Callable[[], Awaitable[None]] | None = None, keep_every_s: float = 10.0
                              ) -> Manifest:
        """Poll the export's status until its manifest: 202 (in progress) waits its `Retry-After` or our backoff
        (doubling, up to `wait_cap_s`); 429 waits longer (its Retry-After, at least double the last wait); 5xx and
        network errors are retried the same way; another 4xx ends it. Gives up after `export_max_s`. `keep` is
        awaited every `keep_every_s` while waiting (the sync renews its leases there)."""
        waited = 0.0
        wait = first_wait_s
        while True:
            try:
                response = await self._send("GET", status_url, headers={"Accept": "application/json"}, retry=False)
                status: int | None = response.status_code
            except UpstreamError:  # network error: poll again later
                response, status = None, None
            if status == 200 and response is not None:
                return _manifest(response)
            if status is not None and status not in (202, *RETRYABLE):
                raise UpstreamError(f"the export status at {where(status_url)} answered {status}", status)
            asked = retry_after_s(response.headers.get("Retry-After")) if response is not None else None
            if status == 429:
                wait = max(wait * 2, asked or 0.0)
            elif asked is not None:
                wait = asked
            else:
                wait = wait * 2 if waited else wait
            wait = min(max(wait, MIN_POLL_S), self.wait_cap_s)  # `Retry-After: 0` again and again: not a busy loop
            if waited + wait > self.export_max_s:
                raise UpstreamError(f"the export at {where(status_url)} did not complete within "
                                    f"{self.export_max_s:.0f} s")
            self.waits.append(wait)
            left = wait
            while left > 0:  # in slices, keeping our leases (`keep`) between them
                await self._sleep(min(left, keep_every_s))
                left -= keep_every_s
                if keep is not None:
                    await keep()
            waited += wait

    async def ndjson(self, url: str, *, requires_token: bool) -> AsyncIterator[dict[str, Any]]:
        """The resources of one export file, streamed line by line (`aiter_lines`), never held whole."""
        headers = {"Accept": "application/fhir+ndjson"}
        if requires_token:
            headers.update(await self.auth.headers())
        async for trial in stamina.retry_context(on=self._backoff, attempts=self.attempts, timeout=None,
                                                 wait_max=self.wait_max_s):
            with trial:
                self.requests += 1
                async with self.http.stream("GET", url, headers=headers, follow_redirects=True) as response:
                    if response.status_code in RETRYABLE:
                        raise _Retry(response, retry_after_s(response.headers.get("Retry-After")))
                    if response.status_code != 200:
                        raise UpstreamError(f"the export file {where(url)} answered {response.status_code}",
                                            response.status_code)
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield json.loads(line)
                return

    async def delete_export(self, status_url: str) -> None:
        """DELETE the export's status URL (the upstream may drop its files): best effort, retried."""
        try:
            await self._send("DELETE", status_url)
        except UpstreamError as exc:
            log.warning("could not delete the export at %s: %s", where(status_url), exc)


def group_members(group: dict[str, Any]) -> set[str]:
    """The upstream Patient ids a Group's `member` entries name (relative or absolute references; inactive members
    too: a Group export covers them)."""
    members = set()
    for member in group.get("member") or []:
        reference = ((member or {}).get("entity") or {}).get("reference") if isinstance(member, dict) else None
        if isinstance(reference, str):
            tail = reference.split("/_history/", 1)[0].rstrip("/").split("/")
            if len(tail) >= 2 and tail[-2] == "Patient" and tail[-1]:
                members.add(tail[-1])
    return members


def _manifest(response: httpx.Response) -> Manifest:
    try:
        body = response.json()
        return Manifest(transaction_time=body["transactionTime"], requires_token=bool(body.get("requiresAccessToken")),
                        output=[(o["type"], o["url"]) for o in body.get("output") or []],
                        error=[(o.get("type", "OperationOutcome"), o["url"]) for o in body.get("error") or []],
                        deleted=[(o.get("type", "Bundle"), o["url"]) for o in body.get("deleted") or []])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UpstreamError(f"the export manifest at {where(str(response.url))} is not a Bulk Data manifest") from None
