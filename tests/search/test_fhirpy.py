"""fhirpy, a FHIR client library, as a portal would use it against the server over real HTTP: chained search,
`_has`, paging through `fetch_all` (next links), and a malformed value refused (issue 11: a real client in a test
of chained search)."""

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

from service.main import create_app
from tests.factories import MRN
from tests.search.conftest import build_trial


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(settings) -> Iterator[tuple[str, dict]]:
    """The app on a real socket (uvicorn in a thread) and the trial loaded into it over HTTP."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            yield base, build_trial(http)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_fhirpy_chained_search_has_and_paging(served):
    base, trial = served
    fhir = SyncFHIRClient(f"{base}/fhir")
    found = fhir.resources("Observation").search(subject__Patient__identifier=f"{MRN}|MRN-2").fetch_all()
    assert {o.id for o in found} == {trial["easi2_base"], trial["ige2"]}
    found = fhir.resources("AdverseEvent").search(subject__Patient__gender="female").fetch_all()
    assert {o.id for o in found} == {trial["ae1"], trial["ae3"]}
    patients = fhir.resources("Patient").has("Observation", "patient", code="19113-0").fetch_all()
    assert {p.id for p in patients} == {trial["p1"], trial["p2"]}
    # fetch_all follows the next links of a chained search two results at a time
    pages = fhir.resources("Observation").search(subject__Patient__gender="female", code="EASI").limit(2)
    assert len(pages.fetch()) == 2
    assert {o.id for o in pages.fetch_all()} == {trial[k] for k in ("easi1_base", "easi1_w4", "easi1_w12",
                                                                      "easi3", "easi3_partial")}
    assert fhir.resources("Observation").search(subject__Patient__gender="male").count() == 2
    with pytest.raises(OperationOutcome) as refused:  # a malformed value is refused, never dropped
        fhir.resources("Observation").search(date="2014-13-45").fetch()
    assert "date" in str(refused.value)


def test_fhirpy_patch_history_and_vread(served):
    """fhirpy's own PATCH (the changed elements as `application/json`: a JSON Merge Patch), then the instance and
    type history and a vread, as an integrator's script does them."""
    base, trial = served
    fhir = SyncFHIRClient(f"{base}/fhir")
    created = fhir.resource("Patient", identifier=[{"system": MRN, "value": "MRN-FHIRPY"}], gender="female",
                            birthDate="1980-02-29")
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"

    patched = fhir.resource("Patient", id=created.id).patch(gender="male", birthDate=None)
    assert patched["gender"] == "male" and "birthDate" not in patched  # null removes (RFC 7396)
    assert patched["identifier"] == [{"system": MRN, "value": "MRN-FHIRPY"}]  # what it doesn't name is kept
    assert patched["meta"]["versionId"] == "2"
    with pytest.raises(OperationOutcome):  # the patched resource is checked as a PUT of it would be
        fhir.resource("Patient", id=created.id).patch(birthDate="1980-02-30")
    assert fhir.reference("Patient", created.id).to_resource()["meta"]["versionId"] == "2"

    history = fhir.execute(f"Patient/{created.id}/_history", method="get")
    assert history["type"] == "history"
    assert [(e["resource"]["meta"]["versionId"], e["resource"]["gender"]) for e in history["entry"]] == [
        ("2", "male"), ("1", "female")]
    assert fhir.execute(f"Patient/{created.id}/_history/1", method="get")["birthDate"] == "1980-02-29"
    type_history = fhir.execute("Patient/_history", method="get", params={"_count": 100})
    mine = [e["resource"]["meta"]["versionId"] for e in type_history["entry"]
            if e.get("resource", {}).get("id") == created.id]
    assert mine == ["2", "1"]
    assert trial["p1"] in {e["resource"]["id"] for e in type_history["entry"] if "resource" in e}
