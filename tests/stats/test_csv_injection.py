"""The summary CSV can't carry a formula into a spreadsheet (issue 10): a text cell that starts like one (an arm
named by whoever registered the study) is written with a leading `'`; numbers, negative ones too, stay numbers."""

import csv
import io

import pytest
from typer.testing import CliRunner

from service.stats.service import FORMULA_STARTS, csv_text
from tests.factories import created, enrol, observation, study

HOSTILE_ARM = '=HYPERLINK("http://x","y")'


def test_an_arm_named_like_a_formula_is_text_and_negative_figures_stay_numbers(client, settings, monkeypatch):
    study_id = created(client.post("/fhir/ResearchStudy", json=study(arms=(HOSTILE_ARM, "@low", "-dose"))))["id"]
    for baseline, week12 in ((30.0, 13.7), (25.0, 8.7)):  # the EASI mean change is -16.3
        ids = enrol(client, arm=HOSTILE_ARM, study_id=study_id)
        for value, day in ((baseline, "2024-01-10"), (week12, "2024-04-03")):
            created(client.post("/fhir/Observation", json=observation(ids["patient"], "EASI", value, day)))
    response = client.get(f"/studies/{study_id}/summary.csv")
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.text)))[1:]
    assert {r[0] for r in rows} == {"'" + HOSTILE_ARM, "'@low", "'-dose"}
    assert not [cell for row in rows for cell in row if cell.startswith(("=", "+", "@", "\t", "\r"))]
    change = {r[3]: r[4] for r in rows if r[:3] == ["'" + HOSTILE_ARM, "week-12", "EASI"]}["mean_change"]
    assert change.startswith("-") and float(change) == pytest.approx(-16.3)  # a number, as written before
    assert all(isinstance(float(row[4]), float) for row in rows)  # every value cell is still a bare number
    # the JSON keeps the name as it is: only the CSV is read by spreadsheets
    assert HOSTILE_ARM in [a["name"] for a in client.get(f"/studies/{study_id}/summary").json()["arms"]]

    from service.cli import app as cli
    from service.settings import get_settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        written = CliRunner().invoke(cli, ["summary", study_id, "--csv", "-"])
    finally:
        get_settings.cache_clear()
    assert written.exit_code == 0, written.output
    assert written.stdout == response.text  # the command writes the same neutralised CSV


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_every_formula_start_is_neutralised(start):
    assert csv_text(f"{start}1+1") == f"'{start}1+1"


@pytest.mark.parametrize("cell", ["high-dose", "week-12", "EASI-50", "mean_pct_change", "", "'quoted"])
def test_ordinary_text_is_left_as_it_is(cell):
    assert csv_text(cell) == cell
