"""FHIR samples and table-driven test cases, as JSON files beside this module.

`mappings/<module>.json` holds the cases of `fhir_mappings/<module>.py`: an object whose keys name the function
under test, each a list of cases `{"name": …, "input": …, "expect": …}` (plus any arguments the function
needs). A case with `"xfail": "<reason>"` documents a known bug: it is marked `xfail(strict=True)`, so it
turns red the day the bug is fixed and the mark must go.
"""

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent


def load_sample(name: str) -> Any:
    """The JSON file `tests/data/<name>`, parsed."""
    return json.loads((DATA / name).read_text())


@cache
def _mapping_cases(module: str) -> dict[str, list[dict]]:
    return load_sample(f"mappings/{module}.json")


def cases(module: str, function: str) -> list:
    """The cases of `function` in `mappings/<module>.json`, as pytest params named by their `name`."""
    table = _mapping_cases(module)[function]
    names = [case["name"] for case in table]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{module}.json/{function}: case names used twice: {duplicates}"
    assert table, f"{module}.json/{function}: no cases"
    params = []
    for case in table:
        assert "expect" in case, f"{module}.json/{function}: case {case['name']!r} has no 'expect'"
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if "xfail" in case else []
        params.append(pytest.param(case, id=case["name"], marks=marks))
    return params


def issue_pairs(issues) -> list[list[str]]:
    """Issues as sorted [code, expression] pairs, the form the case files use (one expression per issue)."""
    pairs = []
    for found in issues:
        assert len(found.expression) == 1, f"issue without exactly one expression: {found}"
        assert found.severity == "error", found
        pairs.append([found.code, found.expression[0]])
    return sorted(pairs)
