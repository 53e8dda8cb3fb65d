"""The SearchParameters the server serves are exact (issue 11 §6): for every parameter of every stored type, each
modifier, comparator and chain its SearchParameter claims is taken by a strict search, and each R4 modifier,
comparator or chain it does not claim is refused with a 400. The claims are read over HTTP only (the
CapabilityStatement's `searchParam.definition`, then the SearchParameter it names), and each is sent for real, so a
generator claiming what the parser refuses, or a parser taking what the generator does not claim, fails here."""

import pytest

from service.core.registry import REGISTRY

STRICT = {"Prefer": "handling=strict"}
#: R4 SearchModifierCode and SearchComparator, all of them
R4_MODIFIERS = ("missing", "exact", "contains", "not", "text", "in", "not-in", "below", "above", "type", "identifier",
                "ofType")
R4_COMPARATORS = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def value_of(sp: dict) -> str:
    """A plausible value of a parameter of SearchParameter `sp` (well-formed, whatever it matches)."""
    if sp["type"] == "reference":
        return f"{sp['target'][0]}/x1" if sp.get("target") else "x1"
    return {"token": "x1", "string": "x1", "date": "2024-03", "quantity": "5", "number": "5",
            "uri": "http://example.org/x"}[sp["type"]]


def modifier_requests(sp: dict, modifier: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a search using `modifier` on `sp` (`type`: once per target type it names)."""
    code = sp["code"]
    if modifier == "missing":
        return [(f"{code}:missing", "true")]
    if modifier == "type":
        return [(f"{code}:{t}", "x1") for t in sp.get("target") or ["Patient"]]
    value = {"in": "http://example.org/ValueSet/x", "not-in": "http://example.org/ValueSet/x",
             "identifier": "http://example.org/ids|1", "ofType": "http://example.org/types|MR|1"}.get(modifier)
    return [(f"{code}:{modifier}", value or value_of(sp))]


def search(client, rtype: str, name: str, value: str) -> int:
    response = client.get(f"/fhir/{rtype}", params={name: value}, headers=STRICT)
    assert response.status_code != 500, (rtype, name, value, response.text)
    if response.status_code == 400:  # said in an OperationOutcome naming the parameter
        body = response.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert any(name in (i.get("expression") or []) for i in body["issue"]), (name, body)
    return response.status_code


def served(client, rtype: str) -> dict[str, dict]:
    """code -> the SearchParameter the CapabilityStatement's `searchParam.definition` names, for `rtype`."""
    resources = {r["type"]: r for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    found = {}
    for declared in resources[rtype]["searchParam"]:
        bundle = client.get("/fhir/SearchParameter", params={"url": declared["definition"]}).json()
        assert bundle["total"] == 1, (rtype, declared)
        sp = bundle["entry"][0]["resource"]
        assert (sp["code"], sp["base"], sp["type"]) == (declared["name"], [rtype], declared["type"]), sp
        assert client.get(f"/fhir/SearchParameter/{sp['id']}").json() == sp
        assert sp["id"] == f"{rtype}-{sp['code'].lstrip('_')}"
        found[sp["code"]] = sp
    return found


@pytest.mark.parametrize("rtype", [t.name for t in REGISTRY])
def test_each_claimed_modifier_and_comparator_is_taken_and_each_other_refused(client, rtype):
    wrong = []
    for code, sp in served(client, rtype).items():
        claimed = set(sp.get("modifier", []))
        assert claimed <= set(R4_MODIFIERS), sp
        for modifier in R4_MODIFIERS:
            for name, value in modifier_requests(sp, modifier):
                status = search(client, rtype, name, value)
                if (status == 200) is not (modifier in claimed):
                    wrong.append(f"{rtype}?{name}={value}: {'' if modifier in claimed else 'not '}claimed, {status}")
        comparators = set(sp.get("comparator", []))
        if sp["type"] not in ("date", "number", "quantity"):
            assert not comparators, sp  # R4: a prefix only on those types; on others it is part of the value
            continue
        for prefix in R4_COMPARATORS:
            status = search(client, rtype, code, prefix + value_of(sp))
            if (status == 200) is not (prefix in comparators):
                wrong.append(f"{rtype}?{code}={prefix}…: {'' if prefix in comparators else 'not '}claimed, {status}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("rtype", [t.name for t in REGISTRY])
def test_each_claimed_chain_is_taken_and_each_other_refused(client, rtype):
    wrong = []
    params = served(client, rtype)
    for code, sp in params.items():
        if sp["type"] != "reference":
            assert "chain" not in sp, sp
            continue
        chains = set(sp.get("chain", []))
        if not chains:  # points at no type this server searches
            if search(client, rtype, f"{code}.identifier", "x1") != 400:
                wrong.append(f"{rtype}?{code}.identifier: no chain claimed, not refused")
            continue
        targets = sp["target"]
        taken: set[str] = set()
        for target in targets:
            bundle = client.get("/fhir/SearchParameter", params={"base": target}).json()
            of_target = {e["resource"]["code"]: e["resource"] for e in bundle.get("entry", [])}
            for inner in sorted(chains | set(of_target)):
                status = search(client, rtype, f"{code}:{target}.{inner}", value_of(of_target[inner])
                                if inner in of_target else "x1")
                expected = 200 if inner in chains and inner in of_target else 400
                if status != expected:
                    wrong.append(f"{rtype}?{code}:{target}.{inner}: {status}, expected {expected}")
                if status == 200:
                    taken.add(inner)
                if len(targets) == 1 and inner in of_target:  # the only target: the type may go unsaid
                    if (search(client, rtype, f"{code}.{inner}", value_of(of_target[inner])) == 200) is not (
                            inner in chains):
                        wrong.append(f"{rtype}?{code}.{inner}: claimed {inner in chains}, answered otherwise")
        if chains - taken:
            wrong.append(f"{rtype} {code}: chains claimed but taken through no target: {sorted(chains - taken)}")
        if search(client, rtype, f"{code}:{targets[0]}.no-such-parameter", "x1") != 400:
            wrong.append(f"{rtype}?{code}.no-such-parameter: not refused")
    assert not wrong, "\n".join(wrong)


def test_every_parameter_of_every_type_is_served_and_the_trial_s_keep_their_ids(client):
    bundle = client.get("/fhir/SearchParameter").json()
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    expected = {f"{t.name}-{name.lstrip('_')}" for t in REGISTRY for name in t.params}
    assert ids == expected and bundle["total"] == len(expected)
    assert {"Observation-study", "Observation-arm", "Observation-visit", "ResearchSubject-arm"} <= ids
    code = client.get("/fhir/SearchParameter/Observation-code").json()
    assert code["derivedFrom"] == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert code["modifier"] == ["missing", "not"] and "comparator" not in code
    assert "derivedFrom" not in client.get("/fhir/SearchParameter/Observation-visit").json()
    by_base = client.get("/fhir/SearchParameter", params={"base": "Observation", "code": "date"}).json()
    assert [e["resource"]["id"] for e in by_base["entry"]] == ["Observation-date"]
