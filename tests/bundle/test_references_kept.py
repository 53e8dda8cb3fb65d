"""What becomes of a kept entry's references in a Bundle (pure: no database): to entries made in the Bundle, to
entries skipped as out of scope, and conditional ones to types this server does not store."""

from service.bundle.service import _all_failures, _rewrite_placeholders
from service.errors import BadRequest, Conflict, RuleViolation

PLACEHOLDERS = {"urn:uuid:p": ("Patient", "p1"), "urn:uuid:e": ("Encounter", "e1"),
                "urn:uuid:i": ("Immunization", "i1")}


def test_references_to_entries_made_become_literal_and_to_skipped_ones_are_not_kept():
    node = {"subject": {"reference": "urn:uuid:p", "display": "Ada"},
            "encounter": {"reference": "urn:uuid:e"},
            "partOf": [{"reference": "urn:uuid:i", "display": "flu shot"}],
            "other": {"reference": "urn:uuid:unknown"}}
    out = _rewrite_placeholders(node, PLACEHOLDERS, {"urn:uuid:e": "Encounter", "urn:uuid:i": "Immunization"})
    assert out == {"subject": {"reference": "Patient/p1", "display": "Ada"},
                   "encounter": {"type": "Encounter", "display": "Encounter not kept by this server"},
                   "partOf": [{"display": "flu shot", "type": "Immunization"}],
                   "other": {"reference": "urn:uuid:unknown"}}


def test_conditional_references_to_types_not_stored_become_logical():
    node = {"performer": [{"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999955949",
                           "display": "Dr. Block"}],
            "location": {"reference": "Location?identifier=abc"},  # an identifier without a system
            "org": {"reference": "Organization?name=General"},  # not an identifier: left as sent
            "patient": {"reference": "Patient?identifier=urn:mrn|1"}}  # a stored type: resolved by the write path
    out = _rewrite_placeholders(node, PLACEHOLDERS, {})
    assert out["performer"] == [{"display": "Dr. Block", "type": "Practitioner",
                                 "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999955949"}}]
    assert out["location"] == {"type": "Location", "identifier": {"value": "abc"}}
    assert out["org"] == {"reference": "Organization?name=General"}
    assert out["patient"] == {"reference": "Patient?identifier=urn:mrn|1"}


def test_all_failures_in_entry_order_with_their_common_status_else_400():
    late = RuleViolation("x", expression="Bundle.entry[10].resource.code")
    early = RuleViolation("y", expression="Bundle.entry[2].resource.subject")
    one_kind = _all_failures([late, early])
    assert one_kind.status_code == 422
    assert [i.expression for i in one_kind.issues] == [("Bundle.entry[2].resource.subject",),
                                                       ("Bundle.entry[10].resource.code",)]
    mixed = _all_failures([late, Conflict("z", expression="Bundle.entry[3].resource.identifier[0]"),
                           BadRequest("w", expression="Bundle.entry[0].request")])
    assert mixed.status_code == 400
    assert [i.expression[0].split("]")[0] for i in mixed.issues] == ["Bundle.entry[0", "Bundle.entry[3",
                                                                      "Bundle.entry[10"]
