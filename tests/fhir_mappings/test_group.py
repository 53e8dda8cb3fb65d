"""A study's cohort as an R4 Group: every research subject a member, the ones who left flagged inactive."""

from datetime import date, datetime

import pytest

from fhir_mappings.group import cohort_group, group_id_for_study, study_id_for_group
from tests.data import cases


def _date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


@pytest.mark.parametrize("case", cases("group", "cohort_group"))
def test_cohort_group(case):
    given = case["input"]
    members = [(patient, status, _date(start), _date(end)) for patient, status, start, end in given["members"]]
    last_updated = datetime.fromisoformat(given["last_updated"]) if given["last_updated"] else None
    assert cohort_group(given["study_id"], given["title"], members, last_updated) == case["expect"]


@pytest.mark.parametrize("study_id", ["s1", "NCT01927705", "a.b-c"])
def test_the_group_of_research_study_x_is_group_x(study_id):
    assert group_id_for_study(study_id) == study_id
    assert study_id_for_group(study_id) == study_id
