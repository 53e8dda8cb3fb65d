"""The pure SDTM helpers (fhir_mappings/sdtm.py): SAS names, --DTC precision, study days, epochs, planned doses,
and the variable metadata every file format relies on. No database."""

import pytest

from fhir_mappings.sdtm import DOMAINS, age_at, dtc, epoch, planned_dose, sas_names, study_day


def test_sas_names_are_8_characters_unique_and_start_with_a_letter():
    names = sas_names(["EASI", "EOSINOPHILS", "EOSINOPHILS-PCT", "EASI-HN-LICHENIFICATION", "EASI-HN-AREA",
                       "EASI-UL-LICHENIFICATION", "2ND-SCORE", "PRURITUS"])
    assert names["EASI"] == "EASI" and names["PRURITUS"] == "PRURITUS"
    assert names["EOSINOPHILS"] == "EOSINOPH"
    assert len(set(names.values())) == len(names)
    for code in names.values():
        assert len(code) <= 8 and code[0].isalpha() and code.isalnum() and code == code.upper()


@pytest.mark.parametrize("value, expected", [
    ("2024-01-10T08:30:00+09:00", "2024-01-10T08:30:00"), ("2024-01-10T08:30+09:00", "2024-01-10T08:30"),
    ("2024-01-10", "2024-01-10"), ("2024-01", "2024-01"), ("2024", "2024"), ("2024-01-10T08:30:00.250Z",
                                                                            "2024-01-10T08:30:00.250"),
    (None, ""), ("garbage", "")])
def test_dtc_keeps_the_precision_the_source_had(value, expected):
    assert dtc(value) == expected


@pytest.mark.parametrize("value, reference, expected", [
    ("2024-01-10", "2024-01-10", 1), ("2024-01-11T09:00", "2024-01-10", 2), ("2024-01-09", "2024-01-10", -1),
    ("2024-01-03", "2024-01-10", -7), ("2024-01", "2024-01-10", None), ("2024-01-10", "", None)])
def test_study_day_has_no_day_zero(value, reference, expected):
    assert study_day(value, reference) == expected


def test_epochs_around_the_administration():
    assert [epoch(d) for d in (-3, 1, 2, None)] == ["SCREENING", "TREATMENT", "FOLLOW-UP", ""]
    assert epoch(1, finding=True) == "SCREENING"  # a baseline finding on day 1 is pre-dose


def test_planned_dose_from_the_arm_description():
    assert planned_dose("2.5 × 10^7 cells") == (25_000_000.0, "CELLS")
    assert planned_dose("5.0 x 10^7 cells") == (50_000_000.0, "CELLS")
    assert planned_dose("100 mg") == (100.0, "MG")
    assert planned_dose("placebo") == (None, "")
    assert planned_dose(None) == (None, "")


def test_age_in_whole_years_at_the_reference_date():
    assert age_at("1990-01-11", "2024-01-10") == 33
    assert age_at("1990-01-10", "2024-01-10") == 34
    assert age_at("1990", "2024-01-10") == 33  # a year only (de-identified): its 1 July
    assert age_at("", "2024-01-10") is None


def test_variable_metadata_fits_xport_version_5():
    for domain, (label, variables) in DOMAINS.items():
        assert len(domain) <= 8 and len(label) <= 40
        names = [v.name for v in variables]
        assert len(names) == len(set(names)), domain
        for v in variables:
            assert 1 <= len(v.name) <= 8 and v.name[0].isalpha() and len(v.label) <= 40, (domain, v)
            assert v.type in ("string", "integer", "float")
