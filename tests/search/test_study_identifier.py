"""A study named by its registry number (an NCT identifier) wherever a study-scoped URL takes its id (issue 11 §4)."""

import pytest

from tests.search.test_search import found, names

STUDY_URLS = ["/studies/{}/summary", "/studies/{}/summary.csv", "/studies/{}/report", "/studies/{}/charts/EASI.svg",
              "/fhir/ResearchStudy/{}/$summary", "/fhir/Group/{}"]


@pytest.mark.parametrize("url", STUDY_URLS)
@pytest.mark.parametrize("key", ["NCT01", "urn:nct|NCT01"])
def test_study_urls_accept_the_registry_number(shared, url, key):
    client, trial = shared
    by_id = client.get(url.format(trial["A"]))
    by_nct = client.get(url.format(key.replace("|", "%7C")))
    assert by_id.status_code == 200, by_id.text
    assert by_nct.status_code == 200, by_nct.text
    if url.endswith("summary") or url.startswith("/fhir/"):
        a, b = by_id.json(), by_nct.json()
        for body in (a, b):  # when it was computed, not what
            body.pop("date", None)
            body.pop("generated", None)
            body.get("meta", {}).pop("lastUpdated", None)
        assert a == b
    else:
        assert by_nct.headers["content-type"] == by_id.headers["content-type"]
    if url == "/fhir/Group/{}":
        assert by_nct.json()["id"] == trial["A"]


@pytest.mark.parametrize("url", STUDY_URLS)
def test_unknown_registry_number_is_404(shared, url):
    client, trial = shared
    for key in ("NCT99999999", "urn:other%7CNCT01"):
        response = client.get(url.format(key))
        assert response.status_code == 404, response.text


def test_group_export_accepts_the_registry_number(shared):
    client, trial = shared
    response = client.get("/fhir/Group/NCT01/$export", headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    assert client.get("/fhir/Group/NCT99999999/$export", headers={"Prefer": "respond-async"}).status_code == 404


def test_research_study_search_by_identifier(shared):
    client, trial = shared
    assert found(client, "ResearchStudy?identifier=NCT01") == names(trial, "A")
    assert found(client, "ResearchStudy?identifier=urn:nct|NCT01") == names(trial, "A")
    assert found(client, "ResearchStudy?identifier=NCT99") == set()
