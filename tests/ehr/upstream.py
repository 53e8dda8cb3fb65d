"""A mocked upstream FHIR server (respx) that behaves like one: Patient search by identifier, Observation and
AdverseEvent searches by patient with `_lastUpdated=ge…`, `_sort=_lastUpdated`, `_count` paging with `next` links,
reads (404 when deleted), Groups (read, `Group?member=`) with Bulk Data Group `$export` (kick-off, status, NDJSON
files of `per_file` resources each, DELETE; a job it `forget`s answers 404), and failures to order."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import respx

EHR = "https://ehr.example.org/fhir"
LOINC = "http://loinc.org"
AD = "https://trial-fhir.org/CodeSystem/ad-scores"


class FakeEhr:
    def __init__(self, base: str = EHR, *, adverse_events: bool = False, export: bool = False) -> None:
        self.base = base
        self.adverse_events = adverse_events
        self.export = export  # the CapabilityStatement declares `export` on Group
        self.patients: dict[str, dict[str, Any]] = {}
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.fail: dict[str, int] = {}  # "Observation page 2" → how many more failures
        self.searches: list[httpx.Request] = []
        self.groups: dict[str, list[str]] = {}  # Group id → its member Patient ids
        self.member_search = True  # False: `Group?member=` ignored (every Group listed), as some servers do
        self.group_search = True  # False: Group search answers 400
        self.per_file = 1000  # export: resources per NDJSON file
        self.pending_polls = 1  # export: 202s before the manifest
        self.jobs: dict[str, dict[str, Any]] = {}
        self.kick_offs: list[httpx.Request] = []
        self.downloads: list[str] = []  # the file URLs fetched, in order
        self.deleted_jobs: list[str] = []

    def tick(self) -> str:
        self.clock += timedelta(seconds=1)
        return self.clock.isoformat().replace("+00:00", "Z")

    def add_patient(self, id: str, system: str, value: str) -> None:
        self.patients[id] = {"resourceType": "Patient", "id": id, "identifier": [{"system": system, "value": value}]}

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        resource = {**resource, "meta": {"versionId": "1", "lastUpdated": self.tick()}}
        self.resources[(resource["resourceType"], resource["id"])] = resource
        return resource

    def delete(self, rtype: str, id: str) -> None:
        del self.resources[(rtype, id)]

    def observation(self, id: str, patient: str, measure: str = "EASI", value: float = 12.0, *,
                    date: str = "2024-01-10", status: str = "final", **extra: Any) -> dict[str, Any]:
        system, code, unit = {"EASI": (AD, "EASI", "{score}"), "IGE": (LOINC, "19113-0", "[IU]/mL"),
                              "HBA1C": (LOINC, "4548-4", "%")}[measure]
        return self.put({"resourceType": "Observation", "id": id, "status": status,
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": date,
                         "encounter": {"reference": f"Encounter/enc-{id}"},
                         "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                           "code": unit}, **extra})

    # -- answers ---------------------------------------------------------------------------------------------

    def capability(self, request: httpx.Request) -> httpx.Response:
        types = ["Patient", "Observation"] + (["AdverseEvent"] if self.adverse_events else [])
        resources: list[dict[str, Any]] = [{"type": t} for t in types]
        if self.export:
            resources.append({"type": "Group", "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]})
        return httpx.Response(200, json={"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                                         "fhirVersion": "4.0.1", "format": ["json"],
                                         "rest": [{"mode": "server", "resource": resources}]})

    def search(self, request: httpx.Request) -> httpx.Response:
        self.searches.append(request)
        params = request.url.params
        rtype = request.url.path.rsplit("/", 1)[-1]
        page = int(params.get("_page", "1"))
        key = f"{rtype} page {page}"
        if self.fail.get(key):
            self.fail[key] -= 1
            return httpx.Response(500)
        if rtype == "Patient":
            system, _, value = params["identifier"].partition("|")
            found = [p for p in self.patients.values()
                     if any(i["system"] == system and i["value"] == value for i in p["identifier"])]
        else:
            patient = params.get("patient") or params.get("subject", "").removeprefix("Patient/")
            found = [r for (t, _), r in self.resources.items() if t == rtype
                     and r["subject"]["reference"] == f"Patient/{patient}"]
            if "code" in params:
                wanted = {tuple(c.split("|", 1)) for c in params["code"].split(",")}
                found = [r for r in found if any((c["system"], c["code"]) in wanted for c in r["code"]["coding"])]
            since = params.get("_lastUpdated")
            if since:
                assert since.startswith("ge")
                found = [r for r in found if r["meta"]["lastUpdated"] >= since[2:]]
            found.sort(key=lambda r: r["meta"]["lastUpdated"])
        if "_elements" in params:
            found = [{"resourceType": r["resourceType"], "id": r["id"]} for r in found]
        count = int(params.get("_count", "1000"))
        chunk = found[(page - 1) * count: page * count]
        body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                "entry": [{"resource": r, "search": {"mode": "match"}} for r in chunk]}
        if page * count < len(found):
            following = httpx.URL(str(request.url)).copy_set_param("_page", str(page + 1))
            body["link"] = [{"relation": "next", "url": str(following)}]
        return httpx.Response(200, json=body)

    def read(self, request: httpx.Request, rtype: str, id: str) -> httpx.Response:
        found = self.resources.get((rtype, id))
        return httpx.Response(200, json=found) if found else httpx.Response(410)

    # -- Groups and Bulk Data -------------------------------------------------------------------------------

    def group(self, id: str, members: list[str]) -> dict[str, Any]:
        return {"resourceType": "Group", "id": id, "type": "person", "actual": True,
                "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]}

    def read_group(self, request: httpx.Request, id: str) -> httpx.Response:
        return httpx.Response(200, json=self.group(id, self.groups[id])) if id in self.groups else httpx.Response(404)

    def search_groups(self, request: httpx.Request) -> httpx.Response:
        self.searches.append(request)
        if not self.group_search:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-supported"}]})
        member = request.url.params.get("member", "").removeprefix("Patient/")
        found = [self.group(g, m) for g, m in sorted(self.groups.items())
                 if not self.member_search or member in m]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": g, "search": {"mode": "match"}} for g in found]})

    def kick_off(self, request: httpx.Request, id: str) -> httpx.Response:
        self.kick_offs.append(request)
        if id not in self.groups:
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-found"}]})
        types = request.url.params.get("_type", "Observation").split(",")
        since = request.url.params.get("_since")
        members = {f"Patient/{m}" for m in self.groups[id]}
        found = sorted((r for (t, _), r in self.resources.items() if t in types
                        and r["subject"]["reference"] in members
                        and (since is None or r["meta"]["lastUpdated"] > since)),
                       key=lambda r: (r["resourceType"], r["meta"]["lastUpdated"]))
        job = str(len(self.jobs) + len(self.deleted_jobs) + 1)
        files = {}
        for rtype in types:
            of_type = [r for r in found if r["resourceType"] == rtype]
            for n, start in enumerate(range(0, len(of_type), self.per_file), 1):
                files[f"{self.base}/bulkfiles/{job}/{rtype}-{n}.ndjson"] = (rtype, of_type[start:start + self.per_file])
        self.jobs[job] = {"polls": self.pending_polls, "files": files, "since": since,
                          "transactionTime": self.tick()}
        return httpx.Response(202, headers={"Content-Location": f"{self.base}/bulkstatus/{job}"})

    def export_status(self, request: httpx.Request, job: str) -> httpx.Response:
        found = self.jobs.get(job)
        if found is None:
            return httpx.Response(404)
        if found["polls"] > 0:
            found["polls"] -= 1
            return httpx.Response(202, headers={"Retry-After": "0", "X-Progress": "busy"})
        return httpx.Response(200, json={"transactionTime": found["transactionTime"], "request": str(request.url),
                                         "requiresAccessToken": False, "error": [],
                                         "output": [{"type": t, "url": u} for u, (t, _) in found["files"].items()]})

    def delete_job(self, request: httpx.Request, job: str) -> httpx.Response:
        if self.jobs.pop(job, None) is None:
            return httpx.Response(404)
        self.deleted_jobs.append(job)
        return httpx.Response(202)

    def forget(self, job: str) -> None:
        """The upstream drops a job by itself (restarted, expired): its status URL and files answer 404."""
        del self.jobs[job]

    def file(self, request: httpx.Request, job: str, name: str) -> httpx.Response:
        url = f"{self.base}/bulkfiles/{job}/{name}"
        self.downloads.append(url)
        found = self.jobs.get(job)
        if found is None or url not in found["files"]:
            return httpx.Response(404)
        lines = [orjson.dumps(r).decode() for r in found["files"][url][1]]
        return httpx.Response(200, text="\n".join(lines), headers={"Content-Type": "application/fhir+ndjson"})

    @contextmanager
    def mocked(self) -> Iterator[respx.MockRouter]:
        with respx.mock(base_url=self.base, assert_all_called=False) as router:
            router.get("/metadata").mock(side_effect=self.capability)
            router.get("/Group").mock(side_effect=self.search_groups)
            router.get(path__regex=r"/Group/(?P<id>[^/$]+)/\$export$",  # named: a test may answer it its own way
                       name="kick_off").mock(side_effect=self.kick_off)
            router.get(path__regex=r"/Group/(?P<id>[^/$]+)$").mock(side_effect=self.read_group)
            router.get(path__regex=r"/bulkstatus/(?P<job>[^/]+)$").mock(side_effect=self.export_status)
            router.delete(path__regex=r"/bulkstatus/(?P<job>[^/]+)$").mock(side_effect=self.delete_job)
            router.get(path__regex=r"/bulkfiles/(?P<job>[^/]+)/(?P<name>[^/]+)$").mock(side_effect=self.file)
            for rtype in ("Patient", "Observation", "AdverseEvent"):
                router.get(f"/{rtype}").mock(side_effect=self.search)
            router.get(path__regex=r"/(?P<rtype>Observation|AdverseEvent)/(?P<id>[^/]+)$").mock(side_effect=self.read)
            yield router
