"""The demo trial as shipped: `data/demo-trial.json.gz`, written once by `python -m service.demo.generate`.

A FHIR Bundle of type `collection` whose entries are transaction Bundles, loaded in order: the studies, one per
subject, then later updates. What it holds is described in `service.demo.generate`.
"""

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

DATA_FILE = Path(__file__).parent / "data" / "demo-trial.json.gz"
REGISTRY = ("https://clinicaltrials.gov", "NCT01927705")
DEMO_SYSTEM = "https://trial-fhir.org/demo"
STUDY_SYSTEM = f"{DEMO_SYSTEM}/study"
PATIENT_SYSTEM = f"{DEMO_SYSTEM}/patient"
SUBJECT_SYSTEM = f"{DEMO_SYSTEM}/research-subject"
OBSERVATION_SYSTEM = f"{DEMO_SYSTEM}/observation"
ADVERSE_EVENT_SYSTEM = f"{DEMO_SYSTEM}/adverse-event"
BUNDLE_SYSTEM = f"{DEMO_SYSTEM}/bundle"
#: HL7 v3 ActReason HTEST "test health data": marks every demo resource as synthetic
SYNTHETIC_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST",
                 "display": "test health data"}
TYPES = ("ResearchStudy", "Patient", "ResearchSubject", "Observation", "AdverseEvent")


@lru_cache(maxsize=1)
def _raw() -> bytes:
    return gzip.decompress(DATA_FILE.read_bytes())


def demo_bundle() -> dict[str, Any]:
    """The shipped Bundle (a fresh copy: change it freely)."""
    return orjson.loads(_raw())


def transactions(bundle: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The transaction Bundles of the collection, in loading order."""
    return [e["resource"] for e in (bundle or demo_bundle())["entry"]]


def bundle_name(transaction: dict[str, Any]) -> str:
    """`studies`, the subject's key (`DEMO-001`) or `later-updates`."""
    return transaction["identifier"]["value"]


def counts(bundle: dict[str, Any] | None = None) -> dict[str, int]:
    """Resources of each type the demo creates (the later updates make new versions, not resources)."""
    out = dict.fromkeys(TYPES, 0)
    for t in transactions(bundle):
        for entry in t["entry"]:
            if entry["request"]["method"] == "POST":
                out[entry["resource"]["resourceType"]] += 1
    return out


def with_ids(transaction: dict[str, Any]) -> list[dict[str, Any]]:
    """The transaction's resources with their local ids (the uuid of their fullUrl) and every `urn:uuid:`
    reference written `Type/id` (for tools that PUT the demo with ids of their own, e.g. the benchmarks)."""
    types = {e["fullUrl"]: e["resource"]["resourceType"] for t in transactions() for e in t["entry"]}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (f"{types[v]}/{v.removeprefix('urn:uuid:')}" if k == "reference" and v in types
                        else rewrite(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return [{"id": e["fullUrl"].removeprefix("urn:uuid:"), **rewrite(e["resource"])} for e in transaction["entry"]]
