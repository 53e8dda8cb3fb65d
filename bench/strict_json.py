"""What the strict R4 JSON checks (issue 11 §1) cost per resource, in process, against the bare ceiling.

    PYTHONPATH=. .venv/bin/python bench/strict_json.py [--before /path/to/an/older/checkout] [--output FILE]

Per Observation (the ingest hot path's resource, as bench/ingest.py makes them) and per transaction Bundle of 100:
`bare` is fhir.resources R4B `model_validate` alone; `structure` is `structure_issues` (the walk + the models), the
whole structure check every write runs; `walk` is the JSON walk alone (`json_issues`); `duplicates` is the
repeated-name check of a Bundle's JSON text (`duplicate_key_issues`) next to `orjson.loads` of the same text. With
`--before`, `structure` of that checkout's `fhir_mappings/validation.py` is measured too, in the same rounds.
The machine is shared: each figure is the best of `--rounds` interleaved rounds (the least disturbed one).
"""

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fhir_mappings import fhir, validation

ROOT = Path(__file__).resolve().parents[1]

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation", "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "survey"}]}],
    "code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/ad-scores", "code": "EASI"}], "text": "EASI"},
    "subject": {"reference": "Patient/5d1c6a4e-1b43-4c1e-9f0a-3c9d2f1b7a10"},
    "effectiveDateTime": "2024-01-10T09:00:00+09:00",
    "identifier": [{"system": "https://hospital.example.org/lab", "value": "LAB-000123"}],
    "valueQuantity": {"value": 12.3, "unit": "score", "system": "http://unitsofmeasure.org", "code": "{score}"},
}


def bundle_text(size: int) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": OBSERVATION,
         "request": {"method": "POST", "url": "Observation"}} for i in range(size)]})


def per_call_us(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older checkout whose structure check to compare")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=1000, help="calls per Observation figure and round")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/issue11/strict-json.json")
    args = parser.parse_args()

    before = None
    if args.before:
        spec = importlib.util.spec_from_file_location("before_validation",
                                                      args.before / "fhir_mappings/validation.py")
        assert spec is not None and spec.loader is not None
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
    assert validation.structure_issues(OBSERVATION, "Observation", fhir.Observation) == []
    raw = bundle_text(100)
    data = orjson.loads(raw)
    assert validation.duplicate_key_issues(raw, data) == []

    figures: dict[str, Callable[[], object]] = {
        "bare": lambda: fhir.Observation.model_validate(OBSERVATION),
        "structure": lambda: validation.structure_issues(OBSERVATION, "Observation", fhir.Observation),
        "walk": lambda: validation.json_issues(OBSERVATION, fhir.Observation, "Observation"),
    }
    if before is not None:
        figures["structure_before"] = lambda: before.structure_issues(OBSERVATION, "Observation", fhir.Observation)
        if hasattr(before, "json_type_issues"):  # the walk before issue 11 §1 (it needed the parsed model)
            parsed = fhir.Observation.model_validate(OBSERVATION)
            figures["walk_before"] = lambda: before.json_type_issues(OBSERVATION, parsed, "Observation")
    bundle_figures: dict[str, Callable[[], object]] = {
        "bundle_loads": lambda: orjson.loads(raw),
        "bundle_duplicates": lambda: validation.duplicate_key_issues(raw, data),
    }
    rounds: dict[str, list[float]] = {k: [] for k in [*figures, *bundle_figures]}
    for _ in range(args.rounds):
        for name, fn in figures.items():
            rounds[name].append(per_call_us(fn, args.number))
        for name, fn in bundle_figures.items():
            rounds[name].append(per_call_us(fn, max(1, args.number // 20)))
    best = {k: round(min(v), 1) for k, v in rounds.items()}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "unit": "µs per call (best of the rounds); bundle_*: per transaction Bundle of 100 Observations",
        "best": best, "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
        "checks_over_bare_per_observation_us": round(best["structure"] - best["bare"]
                                                     + best["bundle_duplicates"] / 100, 1),
    }
    if before is not None:
        result["added_per_observation_us"] = round(best["structure"] - best["structure_before"]
                                                   + best["bundle_duplicates"] / 100, 1)
    if "walk_before" in best:  # the steadier figure on a busy machine: the walks alone
        result["walk_added_per_observation_us"] = round(best["walk"] - best["walk_before"]
                                                        + best["bundle_duplicates"] / 100, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for name, value in best.items():
        print(f"{name:20} {value:10.1f} µs")
    print(f"checks over bare, per Observation: {result['checks_over_bare_per_observation_us']} µs"
          + (f"; added by issue 11 §1: {result['added_per_observation_us']} µs" if before is not None else "")
          + (f" (walks alone: {result['walk_added_per_observation_us']} µs)" if "walk_before" in best else ""))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
