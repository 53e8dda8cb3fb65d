"""`POST /fhir` with a transaction or batch Bundle.

A transaction is one database transaction: ids are given to every POST entry first, so `urn:uuid:`
fullUrls and the references to them resolve; entries run deletes first, then creates and updates in
dependency order (patients and studies, enrolments, then results), then reads. Any failure rolls all of
it back and answers with an OperationOutcome naming the entry. A batch runs each entry on its own.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from fhir_mappings.outcome import outcome
from fhir_mappings.references import ID_RE
from fhir_mappings.validation import TOO_DEEP
from service.audit.events import patients_of, touched
from service.core import resources
from service.core.context import SYSTEM, Caller
from service.core.registry import TYPES
from service.errors import BadRequest, FhirError, PayloadTooLarge
from service.search.service import search
from service.store.unit_of_work import UnitOfWork, utcnow

STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
               404: "404 Not Found", 405: "405 Method Not Allowed", 409: "409 Conflict", 410: "410 Gone",
               412: "412 Precondition Failed", 413: "413 Payload Too Large", 422: "422 Unprocessable Entity"}
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 1, "PATCH": 1, "GET": 2, "HEAD": 2}
JSON_PATCH = "application/json-patch+json"


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


def read_bundle(body: dict[str, Any], max_entries: int) -> tuple[str, list[Request]]:
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
    return kind, [_read_entry(i, e) for i, e in enumerate(entries)]


def _read_entry(i: int, item: Any) -> Request:
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
    if rtype not in TYPES and not (method == "GET" and rtype in ("metadata",)):
        raise BadRequest(f"Resource type '{rtype}' is not supported by this server",
                         expression=f"{where}.request.url")
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
        from urllib.parse import parse_qsl
        uow.flush()
        found = search(uow.session, req.resource_type, parse_qsl(req.query), base, caller=uow.caller)
        uow.touched.extend(touched(found))
        return 200, {"resource": orjson.Fragment(found), "response": {"status": "200 OK"}}
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
    resource = _rewrite_placeholders(req.resource, uow.placeholders) if req.may_refer else req.resource
    assert resource is not None, "_read_entry gives every POST and PUT entry a resource"
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
    """Let each type's handler batch the look-ups its entries will need (one query per Bundle, not per entry)."""
    payloads: dict[str, list[dict[str, Any]]] = {}
    for r in reqs:
        if r.method in ("POST", "PUT") and r.resource is not None:
            payloads.setdefault(r.resource_type, []).append(r.resource)
    for rtype, items in payloads.items():
        hook = TYPES[rtype].prefetch
        if hook is not None:
            hook(uow, items)


def _rewrite_placeholders(node: Any, placeholders: dict[str, tuple[str, str]]) -> Any:
    """Every `reference` to a urn:uuid fullUrl of this Bundle becomes `Type/id` (in place)."""
    if not placeholders:
        return node
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str) and ref in placeholders:
                rtype, rid = placeholders[ref]
                item["reference"] = f"{rtype}/{rid}"
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return node


def transaction(session: Session, body: dict[str, Any], base: str, *, max_entries: int, enforce_rules: bool = True,
                representation: bool = False, caller: Caller = SYSTEM,
                audit: Callable[[UnitOfWork], None] | None = None) -> bytes:
    _, requests = read_bundle(body, max_entries)
    texts = [_resource_text(r) for r in requests]
    # which resources hold a reference that may name another entry's fullUrl: only those are walked to rewrite it
    # (fullUrls that aren't urn: are rare, and then every resource is walked)
    urn_only = all(r.full_url.startswith("urn:") for r in requests if r.full_url)
    for r in requests:
        sent = texts[r.index]
        r.may_refer = sent is not None and (not urn_only or b'"reference":"urn:' in sent)
    attempts = [0]

    def work(uow: UnitOfWork) -> bytes:
        # entries are rewritten in place (references, ids, meta): the first attempt works on the parsed body, and
        # an attempt run again after a write race on a fresh copy of what the client sent
        attempts[0] += 1
        reqs = requests if attempts[0] == 1 else [replace(r, resource=orjson.loads(text))
                                                  if (text := texts[r.index]) is not None else r for r in requests]
        seen_urls = set()
        for r in reqs:
            if r.full_url:
                if r.full_url in seen_urls:
                    raise BadRequest(f"fullUrl {r.full_url} appears twice", expression=f"{r.prefix}.fullUrl")
                seen_urls.add(r.full_url)
            if r.method == "POST" and r.full_url:
                uow.placeholders[r.full_url] = (r.resource_type, resources.new_resource_id())
            elif r.method == "PUT" and r.id and r.full_url and r.full_url.startswith("urn:"):
                uow.placeholders[r.full_url] = (r.resource_type, r.id)
        order = sorted(reqs, key=lambda r: (METHOD_ORDER[r.method], TYPES[r.resource_type].rank
                                            if r.resource_type in TYPES else 9, r.index))
        _prefetch(uow, reqs)
        results: dict[int, dict[str, Any]] = {}
        for r in order:
            try:
                _, results[r.index] = _run_entry(uow, r, base)
            except FhirError as err:
                raise err.prefixed(f"{r.prefix}.resource" if r.resource is not None else r.prefix) from None
        uow.entry_prefix = ""
        entries = [results[r.index] if representation or r.method == "GET" else _minimal(results[r.index])
                   for r in reqs]
        return bundle("transaction-response", entries, timestamp=fhir_instant(utcnow()))

    return resources.run_write(session, work, base_url=base, enforce_rules=enforce_rules, caller=caller, audit=audit)


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
          audit: Callable[[UnitOfWork], None] | None = None) -> bytes:
    """Each entry in its own transaction, with its own audit event (`audit`)."""
    _, requests = read_bundle(body, max_entries)
    entries = []
    for r in requests:
        try:
            _, item = resources.run_write(session, partial(_run_entry, req=r, base=base), base_url=base,
                                          enforce_rules=enforce_rules, caller=caller, audit=audit)
            entries.append(item if representation or r.method == "GET" else _minimal(item))
        except FhirError as err:
            prefixed = err.prefixed(f"{r.prefix}.resource" if r.resource is not None else r.prefix)
            entries.append({"response": {"status": STATUS_TEXT.get(err.status_code, str(err.status_code)),
                                         "outcome": outcome(prefixed.issues)}})
    return bundle("batch-response", entries, timestamp=fhir_instant(utcnow()))

