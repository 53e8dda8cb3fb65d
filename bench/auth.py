"""SMART Backend Services access for the benchmarks (issue 10): a client registered with the `trial-fhir clients add`
command line, and access tokens from the running service's own token endpoint, over HTTP, as a real client gets
them.

    client = register_client(database_url)          # ES384 key pair, public JWKS in a temp file, the CLI
    tokens = Tokens(base, client)                   # discovery: GET {base}/fhir/.well-known/smart-configuration
    headers = {"Authorization": tokens.bearer()}    # a fresh token when less than `margin_s` is left

The service's tokens live at most 300 s, so `bearer()` asks for a new one before the held one gets close to its
expiry; callers ask again before each timed part (or per request: it is a clock comparison).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

ROOT = Path(__file__).resolve().parent.parent
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "system/*.cruds"


@dataclass(frozen=True)
class BenchClient:
    client_id: str
    key: ECKey
    scope: str


def _cli() -> list[str]:
    """The `trial-fhir` command of this interpreter's environment (else the same entry point through `-c`)."""
    script = Path(sys.executable).parent / "trial-fhir"
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("trial-fhir")
    return [found] if found else [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def cli_env(database_url: str) -> dict[str, str]:
    """The service's database for the command line; this checkout's code ahead of any installed copy."""
    extra = os.environ.get("PYTHONPATH")
    return {**os.environ, "DATABASE_URL": database_url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *([extra] if extra else [])])}


def trial_fhir(database_url: str, *args: str) -> str:
    """Run `trial-fhir ARGS` on `database_url`; its standard output (a failure stops the benchmark)."""
    done = subprocess.run([*_cli(), *args], env=cli_env(database_url), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"trial-fhir {' '.join(args)} failed ({done.returncode}):\n{done.stderr or done.stdout}")
    return done.stdout


def register_client(database_url: str, scope: str = SCOPE, name: str = "bench") -> BenchClient:
    """A fresh ES384 (P-384) key pair; its public JWKS registered as client `name` with `scope` through
    `trial-fhir clients add … --json` on the (migrated) database."""
    key = ECKey.generate_key("P-384", parameters={"kid": uuid.uuid4().hex[:12]}, private=True)
    with tempfile.TemporaryDirectory(prefix="bench-jwks-") as folder:
        path = Path(folder) / "jwks.json"
        path.write_text(json.dumps({"keys": [dict(key.as_dict(private=False))]}))
        out = trial_fhir(database_url, "clients", "add", name, "--scope", scope, "--jwks", str(path), "--json")
    try:
        client_id = json.loads(out)["client_id"]
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"trial-fhir clients add printed no client_id: {out!r}") from exc
    return BenchClient(client_id, key, scope)


class Tokens:
    """Access tokens for `client` from the service at `base` (origin, e.g. http://127.0.0.1:8000), kept until
    `margin_s` before their expiry."""

    def __init__(self, base: str, client: BenchClient, margin_s: float = 120.0) -> None:
        self.base = base.rstrip("/")
        self.client = client
        self.margin_s = margin_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._good_until = 0.0
        self.issued = 0
        r = httpx.get(f"{self.base}/fhir/.well-known/smart-configuration", timeout=30)
        if r.status_code != 200:
            raise SystemExit(f"SMART discovery at {self.base}: HTTP {r.status_code}: {r.text[:500]}")
        self.token_url = r.json()["token_endpoint"]

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self.client.client_id, "sub": self.client.client_id, "aud": self.token_url,
                  "iat": now, "exp": now + 240, "jti": uuid.uuid4().hex}
        header = {"alg": "ES384", "kid": self.client.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.client.key, algorithms=["ES384"])

    def _fetch(self) -> None:
        started = time.monotonic()
        r = httpx.post(self.token_url, timeout=30, data={
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(), "scope": self.client.scope})
        if r.status_code != 200:
            raise SystemExit(f"token request to {self.token_url}: HTTP {r.status_code}: {r.text[:500]}")
        body = r.json()
        self._token = body["access_token"]
        self._good_until = started + float(body["expires_in"]) - self.margin_s
        self.issued += 1

    def bearer(self) -> str:
        """`Bearer <token>`, a new token when the held one has less than `margin_s` left."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._good_until:
                self._fetch()
            return f"Bearer {self._token}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.bearer()}


def check_enforced(base: str, path: str, auth: str, headers: dict[str, str]) -> None:
    """The service at `base` really runs with TRIAL_FHIR_AUTH=`auth`: without a token `path` answers 401 under
    `smart` (200 under `off`), and with `headers` 200."""
    with httpx.Client(base_url=base, timeout=30) as client:
        anonymous = client.get(path).status_code
        if (auth == "smart") != (anonymous == 401):
            raise SystemExit(f"TRIAL_FHIR_AUTH={auth}: GET {path} without a token answered {anonymous}")
        answered = client.get(path, headers=headers).status_code
        if answered != 200:
            raise SystemExit(f"TRIAL_FHIR_AUTH={auth}: GET {path} with the benchmark's token answered {answered}")
