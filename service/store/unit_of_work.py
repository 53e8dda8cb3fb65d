"""One write transaction: the rows it will insert, what it has looked up, and how references resolve.

Inserts are gathered and sent as one executemany per table when something needs to read them (or at the
end), so a transaction Bundle of 100 Observations costs a handful of statements, not hundreds.
"""

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, cast, overload

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from fhir_mappings.dates import fhir_instant
from fhir_mappings.outcome import issue
from fhir_mappings.references import ParsedReference, parse_reference, split_token
from service.core.context import SYSTEM, Caller
from service.errors import Conflict, IdentifierTaken, RuleViolation
from service.store import repository
from service.store.models import IdentifierRecord, table_of

_IDENTIFIERS = table_of(IdentifierRecord)


#: psycopg's TransactionStatus.INTRANS: a transaction is open on the server, idle between statements
_INTRANS = 2


def _raise_if_taken(checks: list[tuple[tuple[str, str, str], str, str]],
                    owners: dict[tuple[str, str, str], str]) -> None:
    """409 naming the element of the first identifier another resource holds."""
    for key, id, expression in checks:
        owner = owners.get(key)
        if owner is not None and owner != id:
            rtype, system, value = key
            raise IdentifierTaken(f"{rtype}/{owner} already has identifier {system}|{value}; use a conditional "
                                  "create (If-None-Exist) or update it instead", expression=expression)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Change:
    """A version a unit of work wrote, as the subscriptions' matching reads it (service/subscription): the resource
    as stored (None: a deletion), the content it replaced, and the typed row its index wrote (None: none)."""

    resource_type: str
    id: str
    version_id: int
    body: dict[str, Any] | None
    previous: str | None
    row: dict[str, Any] | None


class UnitOfWork:
    def __init__(self, session: Session, *, base_url: str = "", enforce_rules: bool = True,
                 caller: Caller = SYSTEM, out_of_scope: str = "reject") -> None:
        self.session = session
        self.caller = caller  # whose writes these are: service/core/access.py decides what it may touch
        #: what this unit wrote or read (`Type/id/_history/v`, the Patients it concerns): its audit event's entities
        self.touched: list[tuple[str, list[str]]] = []
        self.written: list[str] = []  # the type of each version this unit writes (a new version or a deletion)
        self.changes: list[Change] = []  # each version this unit writes, for the subscriptions' events
        self._last: dict[Table, dict[str, Any]] = {}  # the last row gathered per table (`last_row`)
        #: what a caller limited to studies wrote: (type, id, letter, entry), checked once its rows are sent
        self.study_checks: list[tuple[str, str, str, str]] = []
        self.now = utcnow()
        self.now_instant = fhir_instant(self.now)  # meta.lastUpdated of everything this unit writes
        self.base_url = base_url.rstrip("/")
        self.enforce_rules = enforce_rules
        #: the server's out-of-scope policy (`reject` or `skip`; a study may set its own): what a Bundle entry the
        #: trial does not keep gets
        self.out_of_scope = out_of_scope
        #: fullUrls of the Bundle entries skipped as out of scope: references to them are not kept
        self.skipped: dict[str, str] = {}  # fullUrl -> resource type
        self.placeholders: dict[str, tuple[str, str]] = {}  # urn:uuid:… -> (type, id)
        self.entry_prefix = ""  # "Bundle.entry[3].resource" while a Bundle entry is processed
        self._pending: dict[Table, list[dict[str, Any]]] = defaultdict(list)
        self._pending_identifiers: list[tuple[tuple[str, str, str], str, str]] = []  # key, id, expression
        self._claimed: dict[tuple[str, str, str], str] = {}
        self._exists: dict[tuple[str, str], bool] = {}
        self.cache: dict[Any, Any] = {}  # domain services keep their look-ups here (enrolments, studies)
        #: have the types' batched look-ups (StoredType.prefetch) run for everything this unit will write? (a
        #: transaction Bundle runs them once for all its entries; a single write runs them for its resource)
        self.prefetched = False
        # (type, id, change(payload) -> payload): server-side updates to apply
        self.follow_ups: list[tuple[str, str, Callable[[dict[str, Any]], dict[str, Any]]]] = []
        #: has this unit sent rows to the database (a flush that had something to send)? A write group
        #: (service/core/write_groups.py) can drop a failing member's gathered rows, not rows already sent
        self.sent = False
        #: structure checks made before the transaction began, by `id()` of the payload checked: their issues (none:
        #: valid). A transaction Bundle checks its entries first, outside SQLite's write lock (service/bundle)
        self.structure: dict[int, list[Any]] = {}
        #: who held (type, system, value) when the unit began (None: nobody), looked up at once for a transaction's
        #: conditions `identifier=system|value` (resources.prefetch_conditions); forgotten for a resource whose
        #: identifiers this unit releases
        self.identifier_owners: dict[tuple[str, str, str], str | None] = {}

    # -- inserts -------------------------------------------------------------------------------------
    def mark(self) -> tuple[dict[Table, int], int, int, int]:
        """Where the gathered work stands (before a Bundle entry), for `rewind`."""
        return ({t: len(rows) for t, rows in self._pending.items()}, len(self._pending_identifiers),
                len(self.touched), len(self.study_checks))

    def rewind(self, mark: tuple[dict[Table, int], int, int, int]) -> None:
        """Forget the inserts gathered since `mark` (an entry of a failing transaction), so that the entries
        checked after it are not disturbed by its half-made rows (the transaction is rolled back anyway)."""
        lengths, identifiers, touched, checks = mark
        for table, rows in self._pending.items():
            del rows[lengths.get(table, 0):]
        del self._pending_identifiers[identifiers:]
        del self.touched[touched:]
        del self.study_checks[checks:]
        self.follow_ups.clear()

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self._pending[table].append(row)
        self._last[table] = row

    def last_row(self, table: Table, id: str) -> dict[str, Any] | None:
        """The row of `id` last gathered for `table` (a typed row its index just wrote), if that is the last one."""
        row = self._last.get(table)
        return row if row is not None and row.get("id") == id else None

    def claim_identifier(self, resource_type: str, id: str, system: str, value: str, expression: str) -> None:
        key = (resource_type, system, value)
        owner = self._claimed.get(key)
        if owner is not None and owner != id:
            raise Conflict(f"Another {resource_type} in this request has identifier {system}|{value}",
                           expression=expression)
        self._claimed[key] = id
        self._pending_identifiers.append((key, id, self._where(expression)))

    def release_identifiers(self, resource_type: str, id: str) -> None:
        self.sent = True
        for key in [k for k, owner in self._claimed.items() if k[0] == resource_type and owner == id]:
            del self._claimed[key]
        for key in [k for k, owner in self.identifier_owners.items() if k[0] == resource_type and owner == id]:
            del self.identifier_owners[key]  # no longer known: a condition naming it is searched for again
        repository.delete_identifiers(self.session, resource_type, id)

    def claimed_by(self, key: tuple[str, str, str]) -> str | None:
        """The resource of this unit of work that holds the identifier `key` (type, system, value), if one does."""
        return self._claimed.get(key)

    def pending(self, *tables: Table) -> bool:
        """Are inserts into any of `tables` gathered but not sent yet? (Read those tables after a flush.)"""
        return any(self._pending.get(table) for table in tables)

    def flush(self) -> None:
        """Send every gathered insert; a taken identifier is a 409 naming the element that holds it."""
        if self._pending_identifiers or any(self._pending.values()):
            self.sent = True
        if self._pending_identifiers:
            checks, self._pending_identifiers = self._pending_identifiers, []
            owners = repository.find_identifier_owners(self.session, [c[0] for c in checks])
            _raise_if_taken(checks, owners)
            self._add_identifiers(checks, owners)
        pending, self._pending = self._pending, defaultdict(list)
        repository.add_rows(self.session, list(pending.items()))

    def _add_identifiers(self, checks: list[tuple[tuple[str, str, str], str, str]],
                         owners: dict[tuple[str, str, str], str]) -> None:
        seen: set[tuple[str, str, str]] = set()
        for key, id, _ in checks:
            if key not in seen and owners.get(key) != id:
                seen.add(key)
                self.add(_IDENTIFIERS, {"resource_type": key[0], "resource_id": id,
                                        "system": key[1], "value": key[2]})

    def commits_in_one_trip(self) -> bool:
        """Can `commit` send what is gathered, the audit append and the COMMIT in one round trip? PostgreSQL, once
        this transaction has reached the server (a look-up proved the connection alive: a connection that died in
        the pool fails there, before anything was sent, and the write runs again on a new one; a failure in the
        round trip that holds the COMMIT may have committed, and is the client's 503)."""
        connection = self.session.connection()
        if connection.dialect.name != "postgresql":
            return False
        driver = connection.connection.driver_connection
        return driver is not None and driver.info.transaction_status == _INTRANS

    def commit(self, statements: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """PostgreSQL (`commits_in_one_trip`): send every gathered insert, then `statements`, then COMMIT, in one
        pipeline. Identifiers are inserted without looking up their owners first: the unique key refuses one that
        is taken (the transaction aborts, nothing is committed), and only then are the owners looked up, for the
        same 409 naming the element as `flush` gives (or, when none owns it any more, the write race's retry)."""
        checks, self._pending_identifiers = self._pending_identifiers, []
        self._add_identifiers(checks, {})
        pending, self._pending = self._pending, defaultdict(list)
        try:
            repository.add_rows_and_commit(self.session, list(pending.items()), statements)
        except IntegrityError:
            if not checks:
                raise
            self.session.rollback()
            owners = repository.find_identifier_owners(self.session, [c[0] for c in checks])
            self.session.rollback()
            _raise_if_taken(checks, owners)
            raise

    def absorb(self, other: "UnitOfWork") -> None:
        """Take over what `other` (a unit of work on the same session) gathered and has not sent, to be sent with
        this unit's own (a write group's members, committed together: service/core/write_groups.py). Identifiers
        two members both claim are left to the unique key, which refuses the commit."""
        for table, rows in other._pending.items():
            self._pending[table].extend(rows)
        self._pending_identifiers.extend(other._pending_identifiers)
        other._pending, other._pending_identifiers = defaultdict(list), []

    # -- references ----------------------------------------------------------------------------------
    def _where(self, expression: str) -> str:
        if self.entry_prefix and "." in expression:
            return self.entry_prefix + expression[expression.index("."):]
        return expression

    def exists(self, resource_type: str, id: str) -> bool:
        key = (resource_type, id)
        if key not in self._exists:  # no flush needed: what this unit wrote or deleted is in _exists already
            self._exists[key] = bool(repository.find_existing_ids(self.session, resource_type, [id]))
        return self._exists[key]

    def prefetch_exists(self, resource_type: str, ids: Collection[str]) -> set[str]:
        """Look up the existence of many ids at once (one query), so `exists()` answers from memory;
        returns those of `ids` that exist."""
        missing = list({i for i in ids if (resource_type, i) not in self._exists})
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            found = repository.find_existing_ids(self.session, resource_type, chunk)
            self._exists.update(((resource_type, i), i in found) for i in chunk)
        return {i for i in ids if self._exists.get((resource_type, i))}

    def mark_written(self, resource_type: str, id: str, alive: bool = True) -> None:
        self._exists[(resource_type, id)] = alive
        self.written.append(resource_type)

    def knows_exists(self, resource_type: str, id: str) -> bool:
        """Is the existence of the resource known already (looked up, or written by this unit)?"""
        return (resource_type, id) in self._exists

    def learn_exists(self, resource_type: str, found: dict[str, bool]) -> None:
        """What a look-up of its own (a prefetch hook's) found of the existence of ids of `resource_type`."""
        self._exists.update(((resource_type, i), alive) for i, alive in found.items())

    def find_by_identifier(self, resource_type: str, system: str | None, value: str) -> list[str]:
        self.flush()
        return repository.find_ids_by_identifier(self.session, resource_type, system, value)

    @overload
    def resolve(self, ref: Any, expected: str, expression: str, *, required: Literal[True] = True) -> str: ...

    @overload
    def resolve(self, ref: Any, expected: str, expression: str, *, required: bool) -> str | None: ...

    def resolve(self, ref: Any, expected: str, expression: str, *, required: bool = True) -> str | None:
        """The id of the local `expected` resource that `ref` points at; rewrites conditional and logical
        references to a literal `Type/id` in place (as FHIR transactions do). 422 when it can't resolve."""
        parsed = parse_reference(ref, expected)
        if parsed.kind == "empty":
            if required:
                raise RuleViolation(f"{expression} must reference a {expected}", expression=expression)
            return None
        if parsed.resource_type and parsed.resource_type != expected:
            raise RuleViolation(f"{expression} must reference a {expected}, not a {parsed.resource_type}",
                                expression=expression)
        if parsed.kind == "literal":
            if parsed.base and self.base_url and parsed.base.rstrip("/") != self.base_url:
                return self._external(parsed, expected, expression)
            # a literal reference always has an id (the id group of its pattern)
            if not self.exists(expected, cast(str, parsed.id)):
                raise RuleViolation(f"{expression} points at {expected}/{parsed.id}, which does not exist",
                                    expression=expression)
            if parsed.base:
                ref["reference"] = f"{expected}/{parsed.id}"
            return parsed.id
        if parsed.kind == "placeholder":
            target = self.placeholders.get(parsed.text)
            if target is None or target[0] != expected:
                raise RuleViolation(f"{expression} '{parsed.text}' matches no {expected} entry of this Bundle",
                                    expression=expression)
            ref["reference"] = f"{expected}/{target[1]}"
            return target[1]
        if parsed.kind == "conditional":
            ids = self._resolve_query(expected, parsed, expression)
            ref["reference"] = f"{expected}/{ids}"
            return ids
        if parsed.kind == "identifier":
            system, value = cast("tuple[str, str]", parsed.identifier)  # set for every identifier reference
            return self._one_match(expected, self.find_by_identifier(expected, system or None, value),
                                   f"identifier {system}|{value}", expression, ref)
        return self._external(parsed, expected, expression)

    def _external(self, parsed: ParsedReference, expected: str, expression: str) -> NoReturn:
        raise RuleViolation(f"{expression} '{parsed.text}' is not a {expected} on this server",
                            expression=expression)

    def match(self, resource_type: str, params: Iterable[tuple[str, str]],
              unsupported: Callable[[str], Exception]) -> list[str]:
        """Ids of the `resource_type` resources matching every (name, value) of a conditional query
        (`identifier=system|value`, `_id=…`); `unsupported(name)` is the error raised for any other name."""
        ids: list[str] | None = None
        for name, value in params:
            if name == "identifier":
                system, val = split_token(value)
                found = self.find_by_identifier(resource_type, system, val)
            elif name == "_id":
                found = [value] if self.exists(resource_type, value) else []
            else:
                raise unsupported(name)
            ids = found if ids is None else [i for i in ids if i in found]
        return ids or []

    def _resolve_query(self, expected: str, parsed: ParsedReference, expression: str) -> str:
        ids = self.match(expected, parsed.query, lambda name: RuleViolation(
            f"{expression}: conditional references support only identifier and _id, not '{name}'",
            expression=expression))
        return self._one_match(expected, ids, parsed.text, expression, None)

    def _one_match(self, expected: str, ids: list[str], what: str, expression: str, ref: dict[str, Any] | None) -> str:
        if len(ids) != 1:
            problem = "no" if not ids else "more than one"
            raise RuleViolation(f"{expression}: {what} matches {problem} {expected}",
                                issues=[issue("business-rule" if ids else "not-found",
                                              f"{expression}: {what} matches {problem} {expected}",
                                              expression)])
        if ref is not None:
            ref.setdefault("reference", f"{expected}/{ids[0]}")
        return ids[0]
