"""/metrics (issue 14 §3): request counts and latency by route template and status, whichever adapter answered;
writes by type; jobs by state; the database pool; who may read it."""

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.main import create_app
from tests.factories import created, patient


def scrape(client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(params=[True, False], ids=["front-door", "routes"])
def client(settings, request):
    with TestClient(create_app(settings.model_copy(update={"front_door": request.param}))) as test_client:
        yield test_client


def test_requests_are_counted_by_route_template_and_status(client):
    before = scrape(client)
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    for _ in range(3):
        client.get(f"/fhir/Patient/{pid}")
    client.get("/fhir/Patient", params={"_count": 1})
    client.get("/fhir/Patient", params={"_count": "x"})
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    total = "trial_fhir_http_requests_total"
    assert grew(total, method="POST", route="/fhir/Patient", status="201") == 1
    assert grew(total, method="GET", route="/fhir/Patient/{id}", status="200") == 3
    assert grew(total, method="GET", route="/fhir/Patient", status="200") == 1
    assert grew(total, method="GET", route="/fhir/Patient", status="400") == 1
    latency = "trial_fhir_http_request_duration_seconds"
    assert grew(f"{latency}_count", method="GET", route="/fhir/Patient/{id}", status="200") == 3
    assert grew(f"{latency}_sum", method="GET", route="/fhir/Patient/{id}", status="200") > 0
    assert grew(f"{latency}_bucket", method="GET", route="/fhir/Patient/{id}", status="200", le="+Inf") == 3
    assert not [k for k in after if pid in str(k)]  # ids never become label values


def test_writes_are_counted_by_type_once_committed(client):
    before = scrape(client)
    created(client.post("/fhir/Patient", json=patient()))
    client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "nonsense"})  # refused: not counted
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}} for _ in range(2)]}
    assert client.post("/fhir", json=bundle).status_code == 200
    after = scrape(client)
    written = "trial_fhir_resources_written_total"
    assert value(after, written, resource_type="Patient") - value(before, written, resource_type="Patient") == 3


def test_jobs_by_state_and_the_pool(client):
    kick = client.get("/fhir/$export", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202
    samples = scrape(client)
    jobs = {labels: v for (name, labels), v in samples.items() if name == "trial_fhir_jobs"}
    assert sum(jobs.values()) == 1 and all(dict(labels)["kind"] == "export" for labels in jobs)
    assert ("trial_fhir_db_pool_checked_out", ()) in samples and ("trial_fhir_db_pool_connections", ()) in samples


def test_off_means_not_served(settings):
    with TestClient(create_app(settings.model_copy(update={"metrics": False}))) as client:
        assert client.get("/metrics").status_code == 404


@pytest.mark.parametrize(("peer", "headers", "status"), [
    ("127.0.0.1", {}, 200),                                          # a scraper on this machine
    ("::1", {}, 200),
    ("10.1.2.3", {}, 403),                                           # anyone else: the token
    ("10.1.2.3", {"Authorization": "Bearer scrape-secret"}, 200),
    ("10.1.2.3", {"Authorization": "Bearer wrong"}, 403),
    ("10.1.2.3", {"X-Forwarded-For": "127.0.0.1"}, 403),             # the peer, never a forwarded address
])
def test_with_access_control_only_loopback_or_the_metrics_token(settings, peer, headers, status):
    smart = settings.model_copy(update={"auth": "smart", "metrics_token": "scrape-secret", "export_worker": False})
    with TestClient(create_app(smart), client=(peer, 50000)) as client:
        answer = client.get("/metrics", headers=headers)
    assert answer.status_code == status
    if status == 403:
        assert answer.json()["issue"][0]["code"] == "forbidden"


def test_without_a_metrics_token_only_loopback(settings):
    smart = settings.model_copy(update={"auth": "smart", "export_worker": False})
    with TestClient(create_app(smart), client=("10.1.2.3", 50000)) as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403


def test_serve_with_workers_prepares_an_empty_multiprocess_folder(settings, tmp_path, monkeypatch):
    from service.cli import _multiprocess_metrics

    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old values")
    (folder / "keep.txt").write_text("not ours")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    _multiprocess_metrics(settings.model_copy(update={"metrics_dir": folder}))
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    _multiprocess_metrics(settings)  # none configured: a temporary folder
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.is_dir() and made.name.startswith("trial-fhir-metrics-")
    made.rmdir()
