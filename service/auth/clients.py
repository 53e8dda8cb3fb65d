"""The clients registered with the built-in authorisation server (`trial-fhir clients …`, and the token endpoint's
look-ups). Registration checks what it can up front, so a client that can never get a token is not stored: its
scopes must be ones this server grants, and its JWKS public RSA or EC keys, each with a kid."""

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from service.auth.jwks import check_public_jwks
from service.auth.models import ClientRecord
from service.auth.scopes import ScopeError, parse_scopes
from service.core.registry import TYPES
from service.db import read_session, write_session
from service.store.models import table_of

C = table_of(ClientRecord)
#: the resource types a scope may name: the stored ones, the studies' cohort Groups and the AuditEvents access
#: control records
SCOPED_TYPES = frozenset({*TYPES, "Group", "AuditEvent"})


class ClientError(ValueError):
    """A registration or look-up that can't be done; the message is for the person at the command line."""


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client, as the rest of the server reads it."""

    client_id: str
    name: str
    scope: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    studies: tuple[str, ...]  # empty: every study
    deidentified: bool
    disabled: bool
    created_at: datetime

    def summary(self) -> dict[str, Any]:
        """What `clients add/list --json` print (no keys: those are the client's to publish)."""
        return {"client_id": self.client_id, "name": self.name, "scope": self.scope, "studies": list(self.studies),
                "deidentified": self.deidentified, "disabled": self.disabled,
                "jwks_url": self.jwks_url, "created": self.created_at.isoformat()}


def _client(record: ClientRecord) -> Client:
    return Client(record.client_id, record.name, record.scope,
                  orjson.loads(record.jwks) if record.jwks else None, record.jwks_url,
                  tuple(orjson.loads(record.studies)), record.deidentified, record.disabled, record.created_at)


def new_client_id() -> str:
    """A random, url-safe client id (144 bits) that doesn't start with `-` or `_`, so that it can be typed as a
    command-line argument (`trial-fhir clients disable ID`) without being taken for an option."""
    while True:
        client_id = secrets.token_urlsafe(18)
        if client_id[0].isalnum():
            return client_id


def add_client(engine: Engine, name: str, scope: str, *, jwks: object = None, jwks_url: str | None = None,
               studies: tuple[str, ...] | list[str] = (), deidentified: bool = False) -> Client:
    """Register a client; ClientError when its scopes, keys or studies can't be used."""
    if not name.strip():
        raise ClientError("the client needs a name")
    try:
        scopes = parse_scopes(scope)
    except ScopeError as exc:
        raise ClientError(str(exc)) from None
    if not scopes:
        raise ClientError("the client needs at least one scope, e.g. system/Observation.rs")
    unknown = [str(s) for s in scopes if s.resource_type != "*" and s.resource_type not in SCOPED_TYPES]
    if unknown:  # a typo would register a scope that never grants anything
        raise ClientError(f"no resource type of this server in {', '.join(unknown)} (known: "
                          f"{', '.join(sorted(SCOPED_TYPES))})")
    if (jwks is None) == (jwks_url is None):
        raise ClientError("give the client's public keys as a JWKS or the URL it publishes them at (one of the two)")
    if jwks is not None:
        try:
            check_public_jwks(jwks)
        except ValueError as exc:
            raise ClientError(f"bad JWKS: {exc}") from None
    if jwks_url is not None and not jwks_url.startswith(("https://", "http://")):
        raise ClientError(f"the JWKS URL must be http(s): {jwks_url!r}")
    if any(not s or "/" in s or "&" in s for s in studies):
        raise ClientError("a study is a ResearchStudy id, e.g. AD-MSC-01")
    record = ClientRecord(client_id=new_client_id(), name=name.strip(), scope=" ".join(scope.split()),
                          jwks=orjson.dumps(jwks).decode() if jwks is not None else None, jwks_url=jwks_url,
                          studies=orjson.dumps(list(dict.fromkeys(studies))).decode(), deidentified=deidentified,
                          disabled=False, created_at=datetime.now(UTC))
    with write_session(engine) as session:
        session.add(record)
        session.commit()
    return _client(record)


def get_client(engine: Engine, client_id: str) -> Client | None:
    with read_session(engine) as session:
        record = session.get(ClientRecord, client_id)
    return _client(record) if record is not None else None


def list_clients(engine: Engine) -> list[Client]:
    with read_session(engine) as session:
        records = session.exec(select(ClientRecord).order_by(col(ClientRecord.created_at))).all()
    return [_client(r) for r in records]


def disable_client(engine: Engine, client_id: str) -> Client:
    """Disable a client: no new tokens, and its tokens stop working within seconds (service/auth/verify.py checks
    the flag). ClientError for an unknown client id."""
    with write_session(engine) as session:
        session.execute(update(C).where(C.c.client_id == client_id).values(disabled=True))
        session.commit()
    client = get_client(engine, client_id)
    if client is None:
        raise ClientError(f"no client with id {client_id!r} (see `trial-fhir clients list`)")
    return client


def is_disabled(engine: Engine, client_id: str) -> bool:
    """True for a disabled client and for one that no longer exists."""
    with read_session(engine) as session:
        record = session.get(ClientRecord, client_id)
    return record is None or record.disabled
