"""This server's access-token signing keys: ES384 (P-384) keys kept in the database so every worker and replica
signs and verifies with the same ones.

The first key is made on first need (the first token, or the first JWKS request). Exactly one key is current: the
unique constraint on `current` makes a worker that loses the race to create it fail its insert and read the
winner's instead. `rotate` retires the current key and makes a new one; a retired key stays published (and
accepted) until every token it signed has expired, retired_at + token lifetime + leeway, and is dropped at the next
rotation after that.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from joserfc.jwk import ECKey, Key, import_key
from sqlalchemy import delete, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from service.auth.models import SigningKeyRecord
from service.db import read_session, write_session
from service.store.models import table_of

ALGORITHM = "ES384"
CURVE = "P-384"
K = table_of(SigningKeyRecord)


@dataclass(frozen=True, slots=True)
class ServerKey:
    kid: str
    key: Key  # private for the current key handed to the signer, public otherwise
    retired_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _new_record() -> SigningKeyRecord:
    key = ECKey.generate_key(CURVE, private=True)
    kid = key.thumbprint()
    return SigningKeyRecord(kid=kid, private_jwk=orjson.dumps({**key.as_dict(private=True), "kid": kid}).decode(),
                            algorithm=ALGORITHM, current=True, created_at=_now())


def _private(record: SigningKeyRecord) -> ServerKey:
    return ServerKey(record.kid, import_key(orjson.loads(record.private_jwk)), record.retired_at)


def current_key(engine: Engine) -> ServerKey:
    """The key new tokens are signed with (private), made now if there is none yet."""
    with read_session(engine) as session:
        record = session.exec(select(SigningKeyRecord).where(col(SigningKeyRecord.current).is_(True))).first()
    if record is not None:
        return _private(record)
    try:
        with write_session(engine) as session:
            record = _new_record()
            session.add(record)
            session.commit()
            return _private(record)
    except IntegrityError:  # another worker made it first: use theirs
        with read_session(engine) as session:
            record = session.exec(select(SigningKeyRecord).where(col(SigningKeyRecord.current).is_(True))).one()
        return _private(record)


def published_keys(engine: Engine, keep_s: float, *, create: bool = True) -> list[ServerKey]:
    """The keys tokens may still be verified with (public): the current one and those retired less than `keep_s`
    ago (the token lifetime plus the clock leeway). `create`: make the first key if there is none."""
    if create:
        current_key(engine)
    horizon = _now() - timedelta(seconds=keep_s)
    with read_session(engine) as session:
        records = session.exec(select(SigningKeyRecord).where(or_(
            col(SigningKeyRecord.current).is_(True), col(SigningKeyRecord.retired_at) > horizon))
            .order_by(col(SigningKeyRecord.created_at).desc())).all()
    return [ServerKey(r.kid, import_key(_public_dict(r)), r.retired_at) for r in records]


def _public_dict(record: SigningKeyRecord) -> dict[str, Any]:
    key = import_key(orjson.loads(record.private_jwk))
    return {**key.as_dict(private=False), "kid": record.kid, "alg": record.algorithm, "use": "sig"}


def public_jwks(engine: Engine, keep_s: float) -> dict[str, list[dict[str, object]]]:
    """The JWKS published at /auth/jwks."""
    return {"keys": [dict(k.key.as_dict(private=False)) for k in published_keys(engine, keep_s)]}


def rotate(engine: Engine, keep_s: float) -> tuple[str, list[str]]:
    """Retire the current key and make a new one; drop retired keys whose tokens have all expired (retired more
    than `keep_s` ago). Returns the new kid and the kids dropped."""
    now = _now()
    with write_session(engine) as session:
        dropped = list(session.exec(select(SigningKeyRecord.kid).where(
            col(SigningKeyRecord.retired_at) <= now - timedelta(seconds=keep_s))).all())
        if dropped:
            session.execute(delete(K).where(K.c.kid.in_(dropped)))
        session.execute(update(K).where(K.c.current.is_(True)).values(current=None, retired_at=now))
        record = _new_record()
        session.add(record)
        session.commit()
    return record.kid, dropped
