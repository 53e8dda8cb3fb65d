"""The CapabilityStatement is exact (issue 11 §6): every interaction, conditional write and operation it claims is
answered (sent for real: never a 404 or 405), every interaction it does not claim is refused, and every FHIR route
of the app is claimed. The claims of a route are read from its name here, independently of how service/conformance
reads the route table (by path), so either getting it wrong fails."""

import re

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from tests.factories import created, enrol, payloads

INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                "search-type")
#: FHIR routes that are no interaction or operation of a type: the statement itself, SMART discovery, the status
#: and cancel URLs of an export job (its kick-off is the $export operation)
NOT_CLAIMED = {"capabilities", "smart_configuration", "export_status", "cancel_export"}


@pytest.fixture
def statement(client) -> dict:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    CapabilityStatement.model_validate(response.json())
    return response.json()["rest"][0]


@pytest.fixture
def ids(client) -> dict[str, str]:
    """An id of each type that has a read: the stored types' made here, the others' known."""
    bodies = payloads(client)
    found = {t: created(client.post(f"/fhir/{t}", json=body))["id"] for t, body in bodies.items()}
    found.update({"CodeSystem": "ad-scores", "ValueSet": "ad-scores", "SearchParameter": "Observation-visit",
                  "Group": enrol(client)["study"]})
    found["AuditEvent"] = client.get("/fhir/AuditEvent?_count=1").json()["entry"][0]["resource"]["id"]
    return found


def send(client, rtype: str, code: str, rid: str):
    """The request of interaction `code` on `rtype` (the resource `rid`)."""
    current = client.get(f"/fhir/{rtype}/{rid}").json()
    return {
        "read": lambda: client.get(f"/fhir/{rtype}/{rid}"),
        "vread": lambda: client.get(f"/fhir/{rtype}/{rid}/_history/1"),
        "update": lambda: client.put(f"/fhir/{rtype}/{rid}", json=current),
        "patch": lambda: client.request("PATCH", f"/fhir/{rtype}/{rid}", json=[],
                                        headers={"Content-Type": "application/json-patch+json"}),
        "delete": lambda: client.delete(f"/fhir/{rtype}/{rid}"),
        "history-instance": lambda: client.get(f"/fhir/{rtype}/{rid}/_history"),
        "history-type": lambda: client.get(f"/fhir/{rtype}/_history"),
        "create": lambda: client.post(f"/fhir/{rtype}", json={k: v for k, v in current.items()
                                                             if k not in ("id", "meta", "identifier")}),
        "search-type": lambda: client.get(f"/fhir/{rtype}"),
    }[code]()


def test_every_claimed_interaction_answers_and_every_other_is_refused(client, statement, ids):
    wrong = []
    for resource in statement["resource"]:
        rtype = resource["type"]
        claimed = {i["code"] for i in resource["interaction"]}
        assert claimed, f"{rtype} claims no interaction"
        for code in [c for c in INTERACTIONS if c != "delete"] + ["delete"]:  # the delete last
            status = send(client, rtype, code, ids[rtype]).status_code
            if code in claimed and (status in (404, 405) or status >= 500):
                wrong.append(f"{rtype} {code}: claimed, answered {status}")
            if code not in claimed and status not in (404, 405):
                wrong.append(f"{rtype} {code}: not claimed, answered {status}")
    assert not wrong, "\n".join(wrong)


def test_conditional_claims_hold(client, statement, ids):
    for resource in statement["resource"]:
        rtype, rid = resource["type"], ids[resource["type"]]
        if resource.get("conditionalRead") == "full-support":
            current = client.get(f"/fhir/{rtype}/{rid}")
            etag, modified = current.headers["etag"], current.headers["last-modified"]
            assert client.get(f"/fhir/{rtype}/{rid}", headers={"If-None-Match": etag}).status_code == 304, rtype
            # full-support: If-Modified-Since too
            assert client.get(f"/fhir/{rtype}/{rid}", headers={"If-Modified-Since": modified}).status_code == 304
        update = client.put(f"/fhir/{rtype}?_id={rid}", json=client.get(f"/fhir/{rtype}/{rid}").json())
        assert (update.status_code == 200) is bool(resource.get("conditionalUpdate")), (rtype, update.text)
        delete = client.delete(f"/fhir/{rtype}?_id=nothing-has-this-id")
        claimed = resource.get("conditionalDelete", "not-supported") != "not-supported"
        assert (delete.status_code == 204) is claimed, (rtype, delete.status_code)
        assert resource.get("updateCreate", False) is ("update" in {i["code"] for i in resource["interaction"]})


#: a value of each search type that matches nothing here
_NOTHING = {"token": "no-such-x", "string": "no-such-x", "date": "lt1900-01", "quantity": "lt-1000000000",
            "reference": "no-such-x"}


def test_conditional_criteria_are_any_search_parameter_of_the_type_strictly(client, statement):
    """The rule each resource's documentation states (R4 has no element for it) holds: a conditional delete takes
    every search parameter the type declares, and refuses an unknown one and a result parameter."""
    checked = 0
    for resource in statement["resource"]:
        rtype = resource["type"]
        if resource.get("conditionalDelete", "not-supported") == "not-supported":
            assert "take as criteria" not in resource.get("documentation", ""), rtype  # AuditEvent: no writes
            continue
        assert "take as criteria any search parameter of " + rtype in resource["documentation"], rtype
        assert "strictly" in resource["documentation"] and "delete" in resource["documentation"], rtype
        for param in resource["searchParam"]:
            r = client.delete(f"/fhir/{rtype}", params={param["name"]: _NOTHING[param["type"]]})
            assert r.status_code == 204, (rtype, param["name"], r.text)
        for query in ("no-such-parameter=1", "_count=1"):
            r = client.delete(f"/fhir/{rtype}?{query}")
            assert r.status_code == 400, (rtype, query, r.text)
            assert r.json()["resourceType"] == "OperationOutcome"
        checked += 1
    assert checked >= 9


def test_reference_policy_claims_hold(client, statement):
    """`literal` and `logical` references are taken, `resolves`: each is resolved (one to nothing is a 422 naming
    it), `local`: to this server's resources (one elsewhere is refused the same way). Shown on Observation.subject;
    every writable type claims the same policy, read by the same reference check."""
    policies = {r["type"]: r.get("referencePolicy") for r in statement["resource"]}
    assert policies["Observation"] == ["literal", "logical", "resolves", "local"]
    assert {tuple(p) for t, p in policies.items() if p} == {("literal", "logical", "resolves", "local")}
    assert policies["AuditEvent"] is None  # written by the server only
    body = payloads(client)["Observation"]
    pid = body["subject"]["reference"].split("/")[1]
    mrn = client.get(f"/fhir/Patient/{pid}").json()["identifier"][0]
    for subject in ({"reference": f"Patient/{pid}"}, {"type": "Patient", "identifier": mrn}):  # literal, logical
        assert client.post("/fhir/Observation", json={**body, "subject": subject}).status_code == 201, subject
    for subject in ({"reference": "Patient/no-such-patient"},  # resolves
                    {"type": "Patient", "identifier": {"system": "http://example.org/mrn", "value": "none"}},
                    {"reference": "http://elsewhere.example.org/fhir/Patient/1"}):  # local
        r = client.post("/fhir/Observation", json={**body, "subject": subject})
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Observation.subject"], r.text


def test_every_claimed_operation_answers(client, statement, ids):
    wrong = []
    levels = [(r["type"], r.get("operation", [])) for r in statement["resource"]]
    levels.append(("system", statement.get("operation", [])))
    for level, operations in levels:
        for op in operations:
            assert op["definition"].startswith("http"), op
            prefix = "/fhir" if level == "system" else f"/fhir/{level}"
            urls = [f"{prefix}/${op['name']}"] + ([f"{prefix}/{ids[level]}/${op['name']}"] if level in ids else [])
            answers = [status for url in urls for status in (client.get(url).status_code,
                                                            client.post(url, json={"resourceType": "Parameters"})
                                                            .status_code)]
            if not any(s not in (404, 405) and s < 500 for s in answers):
                wrong.append(f"{level} ${op['name']}: {answers}")
    assert not wrong, "\n".join(wrong)


def test_system_interactions(client, statement):
    claimed = {i["code"] for i in statement["interaction"]}
    assert {"transaction", "batch", "history-system"} <= claimed
    assert client.get("/fhir/_history").status_code == 200
    batch = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": []})
    assert batch.status_code == 200, batch.text


def _claims_of(name: str) -> list[tuple[str, str, str]]:
    """What a route's name says the statement must claim: (level, kind, what), kind `interaction`, `conditional`
    or `operation`."""
    rules = [
        (r"^(read|vread|update|patch|delete|create)_([A-Z]\w+)$", lambda m: [(m[2], "interaction", m[1])]),
        (r"^history_([A-Z]\w+)$", lambda m: [(m[1], "interaction", "history-instance")]),
        (r"^history_type_([A-Z]\w+)$", lambda m: [(m[1], "interaction", "history-type")]),
        (r"^search_([A-Z]\w+?)(_post)?$", lambda m: [(m[1], "interaction", "search-type")]),
        (r"^conditional_(update|delete)_([A-Z]\w+)$", lambda m: [(m[2], "conditional", m[1])]),
        (r"^conditional_patch_([A-Z]\w+)$", lambda m: [(m[1], "interaction", "patch")]),
        (r"^validate(_instance)?_([A-Z]\w+)$", lambda m: [(m[2], "operation", "validate")]),
        (r"^everything_([A-Z]\w+)$", lambda m: [(m[1], "operation", "everything")]),
        (r"^summary_([A-Z]\w+)$", lambda m: [(m[1], "operation", "summary")]),
        (r"^lookup_([A-Z]\w+?)(_post)?$", lambda m: [(m[1], "operation", "lookup")]),
        (r"^validate_code_([A-Z][a-zA-Z]+)(_instance)?(_post)?$", lambda m: [(m[1], "operation", "validate-code")]),
        (r"^expand_([A-Z][a-zA-Z]+)(_instance)?(_post)?$", lambda m: [(m[1], "operation", "expand")]),
        (r"^export_system$", lambda m: [("system", "operation", "export")]),
        (r"^export_group$", lambda m: [("Group", "operation", "export")]),
        (r"^transaction_or_batch$", lambda m: [("system", "interaction", "transaction"),
                                               ("system", "interaction", "batch")]),
        (r"^history_system$", lambda m: [("system", "interaction", "history-system")]),
    ]
    for pattern, claims in rules:
        match = re.match(pattern, name)
        if match:
            return claims(match)
    return []


def test_every_fhir_route_is_claimed(app, statement):
    from tests.auth.test_access_matrix import routes_of

    claimed: set[tuple[str, str, str]] = {("system", "interaction", i["code"]) for i in statement["interaction"]}
    claimed |= {("system", "operation", o["name"]) for o in statement.get("operation", [])}
    for resource in statement["resource"]:
        rtype = resource["type"]
        claimed |= {(rtype, "interaction", i["code"]) for i in resource["interaction"]}
        claimed |= {(rtype, "operation", o["name"]) for o in resource.get("operation", [])}
        if resource.get("conditionalUpdate"):
            claimed.add((rtype, "conditional", "update"))
        if resource.get("conditionalDelete", "not-supported") != "not-supported":
            claimed.add((rtype, "conditional", "delete"))
    missing, unknown = [], []
    for method, path, name in routes_of(app):
        if not path.startswith("/fhir") or name in NOT_CLAIMED:
            continue
        claims = _claims_of(name)
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if not claims and last.startswith("$"):  # an operation this test has no rule for: its level from the path
            segments = [p for p in path.split("/")[2:] if p]
            claims = [("system" if len(segments) == 1 else segments[0], "operation", last[1:])]
        if not claims:
            unknown.append(f"{method} {path} ({name})")
        missing += [f"{method} {path} ({name}): {c}" for c in claims if c not in claimed]
    assert not unknown, f"FHIR routes this test can't read (name them by the convention, or exempt them): {unknown}"
    assert not missing, f"routes the CapabilityStatement does not claim: {missing}"


def test_search_params_are_the_registry_s_and_each_is_accepted_strictly(client, statement):
    from service.core.registry import TYPES

    for resource in statement["resource"]:
        rtype = resource["type"]
        if rtype not in TYPES:
            continue
        names = [p["name"] for p in resource["searchParam"]]
        assert set(names) == set(TYPES[rtype].params), rtype
        for declared in resource["searchParam"]:
            name = declared["name"]
            targets = TYPES[rtype].params[name].fhir.targets
            value = {"token": "x", "string": "x", "date": "2024", "quantity": "1", "number": "1", "uri": "http://x",
                     "reference": f"{targets[0] if targets else 'Patient'}/x"}[declared["type"]]
            r = client.get(f"/fhir/{rtype}", params={name: value}, headers={"Prefer": "handling=strict"})
            assert r.status_code == 200, (rtype, name, r.text)


def test_each_patch_format_claimed_is_taken(client):
    formats = client.get("/fhir/metadata").json()["patchFormat"]
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]
    assert formats == ["application/json-patch+json", "application/merge-patch+json"]
    bodies = {"application/json-patch+json": [{"op": "replace", "path": "/gender", "value": "male"}],
              "application/merge-patch+json": {"gender": "other"}}
    for media_type in formats:
        r = client.request("PATCH", f"/fhir/Patient/{pid}", json=bodies[media_type],
                           headers={"Content-Type": media_type})
        assert r.status_code == 200, (media_type, r.text)
    assert client.request("PATCH", f"/fhir/Patient/{pid}", content=b"gender=male",
                          headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
