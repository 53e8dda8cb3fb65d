"""`POST /fhir` with a transaction or batch Bundle.

A transaction is one database transaction: ids are given to every POST entry first, so `urn:uuid:`
fullUrls and the references to them resolve; entries run deletes first, then creates and updates in
dependency order (patients and studies, enrolments, then results), then reads. Any failure rolls all of
it back and answers with an OperationOutcome naming the entry. A batch runs each entry on its own.
"""

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from fhir_mappings.json_patch import JSON_PATCH
from fhir_mappings.outcome import issue, outcome
from fhir_mappings.references import ID_RE, parse_reference, split_token
from fhir_mappings.validation import TOO_DEEP, structure_issues
from service.audit.events import AuditRecord, patients_of, touched
from service.core import resources
from service.core.context import SYSTEM, Caller
from service.core.registry import TYPES
from service.errors import BadRequest, FhirError, OutOfScope, PayloadTooLarge, RuleViolation
from service.search.limits import MAX_OR_VALUES, MAX_PARAM_REPEATS, check_query, may_break_limits
from service.search.service import search
from service.store import repository as store
from service.store.unit_of_work import UnitOfWork, utcnow
from service.trial.service import enrolments, study_policy

STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
               404: "404 Not Found", 405: "405 Method Not Allowed", 409: "409 Conflict", 410: "410 Gone",
               412: "412 Precondition Failed", 413: "413 Payload Too Large", 422: "422 Unprocessable Entity"}
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 1, "PATCH": 1, "GET": 2, "HEAD": 2}


@dataclass
class Request:
    """One Bundle entry's request, read and checked."""

    index: int
    method: str
    resource_type: str
    id: str | None
    query: str
    full_url: str | None
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: str | None
    may_refer: bool = True  # may hold a reference to another entry's fullUrl (False: no need to look)
    operations: Any = None  # a PATCH entry's JSON Patch, from its Binary

    @property
    def prefix(self) -> str:
        return f"Bundle.entry[{self.index}]"


def read_bundle(body: dict[str, Any], max_entries: int, max_repeats: int = MAX_PARAM_REPEATS,
                max_values: int = MAX_OR_VALUES) -> tuple[str, list["Request | FhirError"]]:
    if body.get("resourceType") != "Bundle":
        raise BadRequest(f"POST /fhir takes a Bundle, not a {body.get('resourceType')}",
                         expression="Bundle.resourceType")
    kind = body.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest(f"Bundle.type must be 'transaction' or 'batch', got '{kind}'", expression="Bundle.type")
    entries = body.get("entry")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be an array", expression="Bundle.entry")
    if len(entries) > max_entries:
        raise PayloadTooLarge(f"Bundle has {len(entries)} entries; the limit is {max_entries}",
                              expression="Bundle.entry")
    return kind, [_read_or_error(i, e, max_repeats, max_values) for i, e in enumerate(entries)]


def _read_or_error(i: int, item: Any, max_repeats: int, max_values: int) -> "Request | FhirError":
    """The entry's request, or what is wrong with it (the error of that entry alone: a batch's other entries go on,
    a transaction lists it with every other failing entry)."""
    try:
        return _read_entry(i, item, max_repeats, max_values)
    except FhirError as err:
        return err


def _check_entry_query(query: str, at: str, max_repeats: int, max_values: int) -> None:
    """An entry's search (`request.url`'s query, `request.ifNoneExist`) obeys the limits of a request's query
    (service/search/limits.py): a 400 naming where it is, the parameter in the text."""
    if query and may_break_limits(query, max_repeats, max_values):
        try:
            check_query(parse_qsl(query.lstrip("?"), keep_blank_values=True), max_repeats, max_values)
        except BadRequest as err:
            raise BadRequest(str(err), expression=at) from None


def _read_entry(i: int, item: Any, max_repeats: int = MAX_PARAM_REPEATS,
                max_values: int = MAX_OR_VALUES) -> Request:
    where = f"Bundle.entry[{i}]"
    if not isinstance(item, dict):
        raise BadRequest("A Bundle entry must be an object", expression=where)
    req = item.get("request")
    if not isinstance(req, dict) or not isinstance(req.get("method"), str) or not isinstance(req.get("url"), str):
        raise BadRequest("Each entry needs request.method and request.url", expression=f"{where}.request")
    for value, at in ((item.get("fullUrl"), f"{where}.fullUrl"),
                      (req.get("ifNoneExist"), f"{where}.request.ifNoneExist"),
                      (req.get("ifMatch"), f"{where}.request.ifMatch")):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{at} must be a string", expression=at)
    method = req["method"].upper()
    if method not in METHOD_ORDER:
        raise BadRequest(f"request.method '{req['method']}' is not supported here (GET, POST, PUT, PATCH, DELETE)",
                         expression=f"{where}.request.method")
    url = req["url"]
    path = urlsplit(url).path if url.startswith("http") else url.split("?", 1)[0]
    query = url.split("?", 1)[1] if "?" in url else ""
    _check_entry_query(query, f"{where}.request.url", max_repeats, max_values)
    _check_entry_query(req.get("ifNoneExist") or "", f"{where}.request.ifNoneExist", max_repeats, max_values)
    parts = [p for p in path.split("/") if p]
    if url.startswith("http"):  # absolute: keep what follows the type
        idx = next((k for k, p in enumerate(parts) if p in TYPES), None)
        parts = parts[idx:] if idx is not None else parts[-2:]
    resource = item.get("resource")
    if not parts:
        raise BadRequest(f"request.url '{url}' names no resource type", expression=f"{where}.request.url")
    rtype, rid = parts[0], parts[1] if len(parts) > 1 else None
    if resource is not None and not isinstance(resource, dict):
        raise BadRequest("entry.resource must be an object", expression=f"{where}.resource")
    if method in ("POST", "PUT"):
        if resource is None:
            raise BadRequest(f"A {method} entry needs a resource", expression=f"{where}.resource")
        if resource.get("resourceType") != rtype:
            raise BadRequest(f"request.url is for {rtype} but the resource is a {resource.get('resourceType')}",
                             expression=f"{where}.resource.resourceType")
        if method == "PUT" and rid is None and not query:
            raise BadRequest("A PUT entry needs Type/id or a conditional Type?search url",
                             expression=f"{where}.request.url")
        if method == "POST" and len(parts) > 1:
            raise BadRequest("A POST entry's url is the resource type only", expression=f"{where}.request.url")
    operations = None
    if method == "PATCH":
        if rid is None and not query:
            raise BadRequest("A PATCH entry needs Type/id or a conditional Type?search url",
                             expression=f"{where}.request.url")
        operations = _json_patch_of(resource, f"{where}.resource")
        resource = None
    if method == "DELETE" and rid is None and not query:
        raise BadRequest("A DELETE entry needs Type/id or Type?search", expression=f"{where}.request.url")
    if rid is not None and not ID_RE.match(rid):
        raise BadRequest(f"'{rid}' is not a valid id", expression=f"{where}.request.url")
    if rtype not in TYPES and not (method == "GET" and rtype in ("metadata",)) and method not in ("POST", "PUT"):
        raise BadRequest(f"Resource type '{rtype}' is not supported by this server",
                         expression=f"{where}.request.url")
    # a POST or PUT of a type this server does not store is out of scope: the policy decides when it runs
    return Request(i, method, rtype, rid, query, item.get("fullUrl"), resource, req.get("ifNoneExist"),
                   req.get("ifMatch"), operations=operations)


def _json_patch_of(resource: dict[str, Any] | None, where: str) -> Any:
    """A PATCH entry's JSON Patch: R4 (http.html#transaction) carries it as a Binary resource, `contentType`
    application/json-patch+json and the patch base64-encoded in `data`; 400 naming what is wrong. (FHIRPath Patch,
    a Parameters, is not supported.)"""
    if resource is None or resource.get("resourceType") != "Binary":
        raise BadRequest("A PATCH entry carries its JSON Patch in a Binary resource (contentType "
                         f"{JSON_PATCH}, the patch base64-encoded in data)", expression=where)
    if str(resource.get("contentType", "")).split(";")[0].strip().lower() != JSON_PATCH:
        raise BadRequest(f"The Binary of a PATCH entry must have contentType {JSON_PATCH}",
                         expression=f"{where}.contentType")
    try:
        return orjson.loads(base64.b64decode(str(resource.get("data", "")), validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("The Binary's data is not a base64-encoded JSON Patch", expression=f"{where}.data") from None


def _run_entry(uow: UnitOfWork, req: Request, base: str) -> tuple[int, dict[str, Any]]:
    """Run one entry; (status, response entry)."""
    uow.entry_prefix = f"{req.prefix}.resource"
    if req.method == "DELETE":
        if req.id:
            done = resources.delete(uow, req.resource_type, req.id, if_match=req.if_match)
        else:
            deleted = resources.conditional_delete(uow, req.resource_type, req.query)
            done = deleted[0] if deleted else None
        if done is not None:
            _once(uow, done.resource_type, done.id, req)
        status = 204 if done else 204
        resp = {"status": STATUS_TEXT[status]}
        if done:
            resp["etag"] = done.etag
        return status, {"response": resp}
    if req.method == "GET":
        if req.id:
            stored = resources.read(uow.session, req.resource_type, req.id, caller=uow.caller)
            assert stored.content is not None
            uow.touched.append((stored.location, patients_of(req.resource_type, orjson.loads(stored.content))))
            return 200, entry(f"{base}/{req.resource_type}/{req.id}", stored.content,
                              response={"status": "200 OK", "etag": stored.etag,
                                        "lastModified": fhir_instant(stored.last_updated)})
        uow.flush()
        found = search(uow.session, req.resource_type, parse_qsl(req.query), base, caller=uow.caller)
        uow.touched.extend(touched(found))
        return 200, {"resource": orjson.Fragment(found), "response": {"status": "200 OK"}}
    if req.resource_type not in TYPES:
        return _not_stored(uow, req)
    if req.method == "PATCH":
        try:
            stored = resources.patch(uow, req.resource_type, req.id, req.operations, if_match=req.if_match) \
                if req.id else resources.conditional_patch(uow, req.resource_type, req.query, req.operations,
                                                           if_match=req.if_match)
        except FhirError as err:  # the patch is the Binary's data; the patched resource's elements, its resource's
            data = f"{req.prefix}.resource.data"
            err.issues = [replace(i, expression=tuple(data if e.startswith("Patch") else e for e in i.expression))
                          for i in err.issues]
            raise err.prefixed(f"{req.prefix}.resource") from None
        _once(uow, stored.resource_type, stored.id, req)
        modified = uow.now_instant if stored.last_updated is uow.now else fhir_instant(stored.last_updated)
        return stored.status, entry(f"{base}/{stored.resource_type}/{stored.id}", stored.content, response={
            "status": STATUS_TEXT[stored.status], "location": f"{base}/{stored.location}", "etag": stored.etag,
            "lastModified": modified})
    resource = _rewrite_placeholders(req.resource, uow.placeholders, uow.skipped) if req.may_refer else req.resource
    assert resource is not None, "_read_entry gives every POST and PUT entry a resource"
    try:
        return _write_entry(uow, req, resource, base)
    except OutOfScope as err:
        if (err.policy or uow.out_of_scope) != "skip":
            raise
        return _skipped(uow, req, err.issues[0].diagnostics)


def _not_stored(uow: UnitOfWork, req: Request) -> tuple[int, dict[str, Any]]:
    """A POST or PUT entry of a type this server does not store: skipped (200, a warning) under the `skip` policy,
    else 400. The policy is the study's of the patient the resource names (`subject`, `patient`, ...), as enrolled
    when the entry runs (entries of types not stored run first), else the server's."""
    policy = uow.out_of_scope
    patient_id = _patient_named(uow, req.resource or {})
    if patient_id is not None:
        policy = study_policy(enrolments(uow, patient_id)) or policy
    if policy != "skip":
        raise BadRequest(f"Resource type '{req.resource_type}' is not supported by this server",
                         expression=f"{req.prefix}.request.url")
    return _skipped(uow, req, f"this server does not store {req.resource_type} resources")


#: where resources of types this server does not store name their patient (the out-of-scope policy is its study's)
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual")


def _patient_named(uow: UnitOfWork, resource: dict[str, Any]) -> str | None:
    """The id of the existing or Bundle-made Patient that `resource` names by literal or urn reference, if any."""
    for name in _PATIENT_ELEMENTS:
        value = resource.get(name)
        ref = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(ref, str):
            continue
        target = uow.placeholders.get(ref)
        if target is not None:
            return target[1] if target[0] == "Patient" else None
        parsed = parse_reference(value, "Patient")
        if parsed.kind == "literal" and not parsed.base and parsed.resource_type == "Patient" and parsed.id \
                and uow.exists("Patient", parsed.id):
            return parsed.id
    return None


def _skipped(uow: UnitOfWork, req: Request, reason: str) -> tuple[int, dict[str, Any]]:
    """The answer of an entry not kept (out of scope under the `skip` policy): 200 with a warning; nothing of it
    is stored, and references to it from the entries kept are not kept either (see _rewrite_placeholders)."""
    if req.full_url:
        uow.skipped[req.full_url] = req.resource_type
    warning = issue("not-supported", f"not kept: {reason} (out of the trial's scope)", f"{req.prefix}.resource",
                    severity="warning")
    return 200, {"response": {"status": STATUS_TEXT[200], "outcome": outcome([warning])}}


def _write_entry(uow: UnitOfWork, req: Request, resource: dict[str, Any], base: str) -> tuple[int, dict[str, Any]]:
    if req.method == "POST":
        new_id = uow.placeholders.get(req.full_url, (None, None))[1] if req.full_url else None
        stored = resources.create(uow, req.resource_type, resource, if_none_exist=req.if_none_exist, new_id=new_id)
        if req.full_url and req.full_url in uow.placeholders:
            uow.placeholders[req.full_url] = (req.resource_type, stored.id)
    elif req.id:
        stored = resources.update(uow, req.resource_type, req.id, resource, if_match=req.if_match)
        _once(uow, stored.resource_type, stored.id, req)
    else:
        stored = resources.conditional_update(uow, req.resource_type, req.query, resource, if_match=req.if_match)
        _once(uow, stored.resource_type, stored.id, req)
        if req.full_url and req.full_url.startswith("urn:"):
            uow.placeholders[req.full_url] = (req.resource_type, stored.id)
    modified = uow.now_instant if stored.last_updated is uow.now else fhir_instant(stored.last_updated)
    response = {"status": STATUS_TEXT[stored.status], "location": f"{base}/{stored.location}",
                "etag": stored.etag, "lastModified": modified}
    return stored.status, entry(f"{base}/{stored.resource_type}/{stored.id}", stored.content, response=response)


def _once(uow: UnitOfWork, resource_type: str, id: str, req: Request) -> None:
    """R4 (http.html#trules): a transaction SHALL fail when two of its updates or deletes (conditional ones as
    resolved) are of the same resource: which would win is not defined. The unit of work is the transaction's
    (a batch entry has one of its own, so its entries never meet here)."""
    seen: dict[tuple[str, str], str] = uow.cache.setdefault(("bundle", "written"), {})
    first = seen.setdefault((resource_type, id), req.prefix)
    if first != req.prefix:
        raise BadRequest(f"{resource_type}/{id} is updated or deleted twice in this transaction (also by {first})",
                         expression=req.prefix)


def _prefetch(uow: UnitOfWork, reqs: list[Request]) -> None:
    """Let each type's handler batch the look-ups its entries will need (one query per Bundle, not per entry); a
    single write runs the same hook for its one resource (resources._store)."""
    uow.prefetched = True
    payloads: dict[str, list[dict[str, Any]]] = {}
    for r in reqs:
        if r.method in ("POST", "PUT") and r.resource is not None and r.resource_type in TYPES:
            payloads.setdefault(r.resource_type, []).append(r.resource)
    for rtype, items in payloads.items():
        hook = TYPES[rtype].prefetch
        if hook is not None:
            hook(uow, items)


def _rewrite_placeholders(node: Any, placeholders: dict[str, tuple[str, str]],
                          skipped: dict[str, str] | None = None) -> Any:
    """Every `reference` to a urn:uuid fullUrl of this Bundle becomes `Type/id` (in place). A reference to an entry
    skipped as out of scope is not kept: it would point at nothing on this server. The Reference keeps what else it
    says (`display`, `identifier`) and gets the type it pointed at (`type`), plus a `display` when it had none."""
    if not placeholders:
        return node
    skipped = skipped or {}
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str) and "?identifier=" in ref and ref.split("?", 1)[0] not in TYPES \
                    and not ref.startswith("http"):
                _to_logical(item, ref)
            elif isinstance(ref, str) and ref in skipped:
                del item["reference"]
                item.setdefault("type", skipped[ref])
                item.setdefault("display", f"{skipped[ref]} not kept by this server")
            elif isinstance(ref, str) and ref in placeholders:
                rtype, rid = placeholders[ref]
                item["reference"] = f"{rtype}/{rid}"
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return node


def _to_logical(item: dict[str, Any], ref: str) -> None:
    """A conditional reference to a type this server does not store (Synthea's `Practitioner?identifier=…`) can't be
    resolved here: it is kept as the logical reference it means (`type` and `identifier`), not as a query."""
    rtype, _, query = ref.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        return
    system, value = split_token(pairs[0][1])
    if not value:
        return
    del item["reference"]
    item.setdefault("type", rtype)
    item.setdefault("identifier", {**({"system": system} if system else {}), "value": value})


def transaction(session: Session, body: dict[str, Any], base: str, *, max_entries: int, enforce_rules: bool = True,
                representation: bool = False, caller: Caller = SYSTEM,
                audit: Callable[[UnitOfWork], Sequence[AuditRecord]] | None = None, out_of_scope: str = "reject",
                max_repeats: int = MAX_PARAM_REPEATS, max_values: int = MAX_OR_VALUES,
                first: Callable[[UnitOfWork], None] | None = None) -> bytes:
    """All or nothing. Every entry is checked before the transaction gives up: a failing one answers with one
    OperationOutcome listing every failing entry (`Bundle.entry[i]…`), and nothing is stored. `first` runs at the
    start of the transaction (each attempt), before any entry: what an adapter records in the same transaction (the
    HL7 v2 message id, service/hl7), or refuses by raising."""
    work = transaction_work(body, base, max_entries=max_entries, representation=representation,
                            max_repeats=max_repeats, max_values=max_values, first=first)
    return resources.run_write(session, work, base_url=base, enforce_rules=enforce_rules, caller=caller, audit=audit,
                               out_of_scope=out_of_scope)


def transaction_work(body: dict[str, Any], base: str, *, max_entries: int, representation: bool = False,
                     max_repeats: int = MAX_PARAM_REPEATS, max_values: int = MAX_OR_VALUES,
                     first: Callable[[UnitOfWork], None] | None = None) -> Callable[[UnitOfWork], bytes]:
    """A transaction's work on a unit of work (what `transaction` commits, alone or in a write group): the Bundle is
    read and its entries' structure checked here, before any database work. Run more than once (after a write race,
    or alone after its group gave up), it starts again from what the client sent."""
    _, read = read_bundle(body, max_entries, max_repeats, max_values)
    failed: list[FhirError] = [e for e in read if isinstance(e, FhirError)]
    requests = [r for r in read if isinstance(r, Request)]
    texts: dict[int, bytes | None] = {}
    for r in requests:
        try:
            texts[r.index] = _resource_text(r)
        except FhirError as err:
            failed.append(err)
            texts[r.index] = None
    requests = [r for r in requests if r.resource is None or texts[r.index] is not None]
    # which resources hold a reference that may name another entry's fullUrl: only those are walked to rewrite it
    # (fullUrls that aren't urn: are rare, and then every resource is walked)
    urn_only = all(r.full_url.startswith("urn:") for r in requests if r.full_url)
    for r in requests:
        sent = texts[r.index]
        r.may_refer = sent is not None and (not urn_only or b'"reference":"urn:' in sent)
    # the entries' structure (the costliest check: fhir.resources) is checked here, before the transaction takes
    # SQLite's write lock, so that another process's transaction can be checked while this one writes; each entry
    # meets its outcome where it would have checked it (resources.create, update), in the same order as before
    structure = {id(r.resource): structure_issues(r.resource, r.resource_type, TYPES[r.resource_type].model)
                 for r in requests if r.method in ("POST", "PUT") and r.resource is not None
                 and r.resource_type in TYPES}
    attempts = [0]

    def work(uow: UnitOfWork) -> bytes:
        # entries are rewritten in place (references, ids, meta): the first attempt works on the parsed body, and
        # an attempt run again after a write race on a fresh copy of what the client sent
        attempts[0] += 1
        if attempts[0] == 1:
            uow.structure = dict(structure)
        if first is not None:
            first(uow)
        reqs = requests if attempts[0] == 1 else [replace(r, resource=orjson.loads(text))
                                                  if (text := texts[r.index]) is not None else r for r in requests]
        failures = list(failed)
        seen_urls: dict[str, str] = {}
        for r in reqs:
            if r.full_url:
                if r.full_url in seen_urls:
                    failures.append(BadRequest(f"fullUrl {r.full_url} appears twice (also in {seen_urls[r.full_url]})",
                                               expression=f"{r.prefix}.fullUrl"))
                seen_urls.setdefault(r.full_url, r.prefix)
            if r.method == "POST" and r.full_url:
                uow.placeholders[r.full_url] = (r.resource_type, resources.new_resource_id())
            elif r.method == "PUT" and r.id and r.full_url and r.full_url.startswith("urn:"):
                uow.placeholders[r.full_url] = (r.resource_type, r.id)
        # entries of types not stored run first (they write nothing): the references to those skipped are known
        order = sorted(reqs, key=lambda r: (METHOD_ORDER[r.method], TYPES[r.resource_type].rank
                                            if r.resource_type in TYPES else -1, r.index))
        # the resources written by id are locked first, in one order whatever the entries' (issue 12 §2: two
        # transactions updating A and B in opposite orders deadlocked on PostgreSQL, a 409 for serialisable work)
        store.lock_current(uow.session, [(r.resource_type, r.id) for r in reqs if r.method in ("PUT", "PATCH", "DELETE")
                                         and r.id and r.resource_type in TYPES])
        _prefetch(uow, reqs)
        resources.prefetch_conditions(uow, [(r.resource_type, r.query if r.method == "PUT" else r.if_none_exist or "")
                                            for r in reqs if r.resource_type in TYPES and (
                                                r.method == "PUT" and not r.id and r.query
                                                or r.method == "POST" and r.if_none_exist)])
        results: dict[int, dict[str, Any]] = {}
        for r in order:
            mark = uow.mark()
            try:
                _, results[r.index] = _run_entry(uow, r, base)
            except FhirError as err:
                uow.rewind(mark)
                failures.append(err.prefixed(f"{r.prefix}.resource" if r.resource is not None else r.prefix))
            except (IntegrityError, OperationalError):
                if not failures:
                    raise  # a write race: run_write runs the transaction again
                break  # after an entry failed the database may refuse what follows: report what is known
        uow.entry_prefix = ""
        if failures:
            raise _all_failures(failures)
        entries = [results[r.index] if representation or r.method == "GET" else _minimal(results[r.index])
                   for r in reqs]
        return bundle("transaction-response", entries, timestamp=fhir_instant(utcnow()))

    return work


def groupable(body: dict[str, Any], limit: int) -> tuple[bool, bool]:
    """(may join a write group, must see what the members before it wrote): a transaction of at most `limit`
    entries may; one with a conditional entry (a search in its URL or `ifNoneExist`) looks up before it writes."""
    entries = body.get("entry")
    if body.get("type") != "transaction" or not isinstance(entries, list) or not 0 < len(entries) <= limit:
        return False, False
    conditional = False
    for item in entries:
        request = item.get("request") if isinstance(item, dict) else None
        if not isinstance(request, dict):
            return False, False  # refused as it would be alone, outside a group
        if "?" in str(request.get("url", "")) or request.get("ifNoneExist"):
            conditional = True
    return True, conditional


def _all_failures(failures: list[FhirError]) -> FhirError:
    """One error listing the issues of every failing entry, in entry order: with their common status (one kind of
    failure), else 400."""
    def entry_index(err: FhirError) -> int:
        where = next((e for i in err.issues for e in i.expression), "")
        digits = where.removeprefix("Bundle.entry[").split("]", 1)[0]
        return int(digits) if digits.isdigit() else -1
    ordered = sorted(failures, key=entry_index)
    issues = [i for err in ordered for i in err.issues]
    statuses = {err.status_code for err in ordered}
    kind: type[FhirError] = type(ordered[0]) if len(statuses) == 1 else BadRequest
    text = str(ordered[0]) if len(ordered) == 1 else \
        f"{len(ordered)} entries of the transaction failed; nothing was stored"
    if kind is OutOfScope:
        kind = RuleViolation
    return kind(text, issues=issues)


def _resource_text(req: Request) -> bytes | None:
    """The entry's resource as JSON bytes (the pristine copy each attempt starts from); 400 naming the entry
    when it is nested too deep to serialise (orjson stops at 255 levels; the structure check at 64)."""
    if not req.resource:
        return None
    try:
        return orjson.dumps(req.resource)
    except orjson.JSONEncodeError:
        raise BadRequest(TOO_DEEP, expression=f"{req.prefix}.resource") from None


def _minimal(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "resource"} if "response" in item else item


def batch(session: Session, body: dict[str, Any], base: str, *, max_entries: int, enforce_rules: bool = True,
          representation: bool = False, caller: Caller = SYSTEM,
          audit: Callable[[UnitOfWork], Sequence[AuditRecord]] | None = None, out_of_scope: str = "reject",
          max_repeats: int = MAX_PARAM_REPEATS, max_values: int = MAX_OR_VALUES) -> bytes:
    """Each entry in its own transaction, with its own audit event (`audit`): an entry that fails (it can't be
    read, its type is not stored, its resource is invalid, a reference or a trial rule is broken) is that entry's
    4xx with its OperationOutcome in `response.outcome`; the others proceed."""
    _, requests = read_bundle(body, max_entries, max_repeats, max_values)
    entries = []
    for r in requests:
        try:
            if isinstance(r, FhirError):  # the entry could not be read: its own error, the others go on
                raise r
            _, item = resources.run_write(session, partial(_run_entry, req=r, base=base), base_url=base,
                                          enforce_rules=enforce_rules, caller=caller, audit=audit,
                                          out_of_scope=out_of_scope)
            entries.append(item if representation or r.method == "GET" else _minimal(item))
        except FhirError as err:
            prefixed = err if isinstance(r, FhirError) else \
                err.prefixed(f"{r.prefix}.resource" if r.resource is not None else r.prefix)
            entries.append({"response": {"status": STATUS_TEXT.get(err.status_code, str(err.status_code)),
                                         "outcome": outcome(prefixed.issues)}})
    return bundle("batch-response", entries, timestamp=fhir_instant(utcnow()))

