"""The visit and study day an Observation was assigned, carried in its meta.tag (issue 11 §9)."""

import pytest

from fhir_mappings.observation import with_derived_tags
from fhir_mappings.terminology import STUDY_DAY_SYSTEM, VISIT_SYSTEM

SECURITY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}
OWN_TAG = {"system": "https://ehr.example.org/tags", "code": "imported"}


@pytest.mark.parametrize(("meta", "visit", "day", "expect"), [
    (None, "week-4", 28, {"tag": [{"system": VISIT_SYSTEM, "code": "week-4"},
                                  {"system": STUDY_DAY_SYSTEM, "code": "28"}]}),
    ({}, "baseline", -3, {"tag": [{"system": VISIT_SYSTEM, "code": "baseline"},
                                  {"system": STUDY_DAY_SYSTEM, "code": "-3"}]}),
    ({"tag": []}, "unscheduled", None, {"tag": [{"system": VISIT_SYSTEM, "code": "unscheduled"}]}),
    # the client's own tags and other meta elements are kept, in their order, before the server's
    ({"profile": ["http://example.org/p"], "security": [SECURITY], "tag": [OWN_TAG]}, "week-12", 84,
     {"profile": ["http://example.org/p"], "security": [SECURITY],
      "tag": [OWN_TAG, {"system": VISIT_SYSTEM, "code": "week-12"}, {"system": STUDY_DAY_SYSTEM, "code": "84"}]}),
    # tags of the server's two systems are the server's: what a client sent is replaced
    ({"tag": [{"system": VISIT_SYSTEM, "code": "week-12"}, OWN_TAG, {"system": STUDY_DAY_SYSTEM, "code": "1"}]},
     "week-4", 30, {"tag": [OWN_TAG, {"system": VISIT_SYSTEM, "code": "week-4"},
                            {"system": STUDY_DAY_SYSTEM, "code": "30"}]}),
])
def test_with_derived_tags(meta, visit, day, expect):
    given = None if meta is None else {**meta}
    assert with_derived_tags(meta, visit, day) == expect
    assert meta == given  # the input is not changed


def test_with_derived_tags_twice_is_the_same():
    once = with_derived_tags({"tag": [OWN_TAG]}, "week-4", 28)
    assert with_derived_tags(once, "week-4", 28) == once
