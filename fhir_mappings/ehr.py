"""Resources pulled from an upstream FHIR server (an EHR), made ours: pure functions, no I/O.

| upstream                                   | ours                                                              |
|--------------------------------------------|-------------------------------------------------------------------|
| `id` (e.g. `obs-17`)                       | `identifier` `{system: <base>/<Type>, value: obs-17}` (the key of the conditional update: a re-sync updates, never duplicates); added to the upstream's identifiers, or in place of the one an AdverseEvent may have (R4: 0..1) |
| `meta` (versionId, lastUpdated, tags)      | `meta.source` = `<base>/<Type>/<id>` (nothing else: versionId and lastUpdated are ours)    |
| `subject` / `patient` → `Patient/<up id>`  | `Patient/<our id>` (the enrolled patient found upstream by identifier)                     |
| any other reference (`encounter`, `performer`, `study`, …) | its `display` and `identifier` kept; the reference itself dropped (we don't hold its target): `display` is the upstream URL when it had none |
| AdverseEvent `study`                       | left out: the upstream's ResearchStudy is not ours (the subject's enrolment names the study) |
| `#contained` references, `contained`       | as they are                                                        |
| everything else (`status` too: `entered-in-error` stays so) | as it is                                        |
"""  # noqa: E501

import copy
import re
from typing import Any
from urllib.parse import quote

#: R4 types whose `identifier` is one Identifier (0..1), not a list: the upstream identity takes its place
SINGLE_IDENTIFIER = frozenset({"AdverseEvent"})
#: elements left out: the upstream's own ResearchStudy means nothing here (the subject's enrolment says the study)
DROPPED = {"AdverseEvent": ("study",)}
#: `Type/id` (optionally `/_history/v`) at the end of a reference, relative or absolute
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def upstream_system(base_url: str, resource_type: str) -> str:
    """The identifier system that holds an upstream resource's id: `<base>/<Type>`."""
    return f"{base_url.rstrip('/')}/{resource_type}"


def identity_query(base_url: str, resource_type: str, upstream_id: str) -> str:
    """The conditional update's search: the identifier that carries the upstream id."""
    return "identifier=" + quote(f"{upstream_system(base_url, resource_type)}|{upstream_id}", safe="")


def parse_reference(reference: str) -> tuple[str, str] | None:
    """`Patient/p1`, `https://ehr/fhir/Patient/p1/_history/2` → `("Patient", "p1")`; None for anything else."""
    match = _REFERENCE.search(reference)
    return (match.group(1), match.group(2)) if match else None


def localise(resource: dict[str, Any], base_url: str, patients: dict[str, str]) -> dict[str, Any]:
    """The upstream `resource` as we store it (the module's table): `patients` maps upstream Patient ids to ours.
    The upstream resource is left as it was."""
    rtype, upstream_id = resource["resourceType"], resource["id"]
    base = base_url.rstrip("/")
    body = {k: copy.deepcopy(v) for k, v in resource.items() if k not in ("id", "meta", *DROPPED.get(rtype, ()))}
    body["meta"] = {"source": f"{base}/{rtype}/{upstream_id}"}
    for key, value in list(body.items()):
        if key not in ("contained", "resourceType"):
            body[key] = _rewrite(value, base, patients)
    identity = {"system": upstream_system(base, rtype), "value": upstream_id}
    if rtype in SINGLE_IDENTIFIER:
        body["identifier"] = identity
    else:
        kept = [i for i in body.get("identifier") or [] if i.get("system") != identity["system"]]
        body["identifier"] = [*kept, identity]
    return body


def _rewrite(value: Any, base: str, patients: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_rewrite(v, base, patients) for v in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("reference"), str):
        return _reference(value, base, patients)
    return {k: _rewrite(v, base, patients) for k, v in value.items()}


def _reference(ref: dict[str, Any], base: str, patients: dict[str, str]) -> dict[str, Any]:
    text = ref["reference"]
    if text.startswith("#"):
        return ref
    target = parse_reference(text)
    absolute = text.startswith(("http://", "https://"))
    if target is not None and target[0] == "Patient" and target[1] in patients \
            and (not absolute or text.startswith(base + "/")):
        return {**{k: v for k, v in ref.items() if k != "reference"}, "reference": f"Patient/{patients[target[1]]}"}
    kept = {k: v for k, v in ref.items() if k in ("display", "identifier", "type", "extension")}
    if "display" not in kept:
        kept["display"] = text if absolute else f"{base}/{text}"
    return kept


def entry(resource: dict[str, Any], base_url: str, patients: dict[str, str], ours: str | None = None
          ) -> dict[str, Any]:
    """A Bundle entry that stores the upstream `resource` as ours: an update of `ours` (our copy's id) when we
    hold one, else a create (the identity identifier, unique per type, keeps a second copy from ever being made)."""
    rtype = resource["resourceType"]
    body = localise(resource, base_url, patients)
    if ours is not None:
        return {"resource": {**body, "id": ours}, "request": {"method": "PUT", "url": f"{rtype}/{ours}"}}
    return {"resource": body, "request": {"method": "POST", "url": rtype}}


def last_updated(resource: dict[str, Any]) -> str | None:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def supported_types(capability: dict[str, Any]) -> set[str]:
    """The resource types a CapabilityStatement's server side declares."""
    return {str(r["type"]) for rest in capability.get("rest") or [] if rest.get("mode", "server") == "server"
            for r in rest.get("resource") or [] if isinstance(r, dict) and r.get("type")}


def offers_group_export(capability: dict[str, Any]) -> bool:
    """Does the CapabilityStatement declare the Bulk Data `export` operation (system level or on Group)?"""
    for rest in capability.get("rest") or []:
        names = [op.get("name") for op in rest.get("operation") or []]
        names += [op.get("name") for r in rest.get("resource") or [] if r.get("type") == "Group"
                  for op in r.get("operation") or []]
        if any(n in ("export", "group-export", "$export") for n in names):
            return True
    return False
