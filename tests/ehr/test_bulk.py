"""Bulk Data without a configured Group (the sync finds the upstream's Group) and resuming an interrupted export,
against the mocked upstream of tests/ehr/upstream.py."""

import orjson
import pytest

from service.db import read_session
from service.ehr import repository
from service.ehr.flows import ExportState, Sync
from service.ehr.service import add_source, list_sources, run_sync, status
from tests.ehr.upstream import EHR, FakeEhr
from tests.factories import MRN, enrol


class Killed(Exception):
    """The sync's process dies here (as a kill would stop it: nothing after this point runs)."""


@pytest.fixture
def two(client):
    """Two patients enrolled in one study: MRN-1 and MRN-2."""
    first = enrol(client, mrn="MRN-1")
    second = enrol(client, mrn="MRN-2", study_id=first["study"])
    return first, second


@pytest.fixture
def ehr(engine):
    fake = FakeEhr(export=True)
    fake.add_patient("up-1", MRN, "MRN-1")
    fake.add_patient("up-2", MRN, "MRN-2")
    add_source(engine, "ehr", EHR)
    return fake


def _stored(client, patient_id: str) -> dict[str, dict]:
    bundle = client.get(f"/fhir/Observation?subject=Patient/{patient_id}&_count=100").json()
    found = [e["resource"] for e in bundle.get("entry", [])]
    by_upstream = {r["meta"]["source"].rsplit("/", 1)[-1]: r for r in found}
    assert len(by_upstream) == len(found), "a duplicate: two copies of one upstream resource"
    return by_upstream


def _total(client, patient_id: str) -> int:
    return client.get(f"/fhir/Observation?subject=Patient/{patient_id}&_summary=count").json()["total"]


def _state(engine) -> ExportState | None:
    with read_session(engine) as session:
        source = repository.get_source(session, "ehr")
        assert source is not None
        return ExportState.from_json(source.export_state)


def _group_requests(ehr: FakeEhr) -> list[str]:
    return [str(r.url) for r in ehr.searches if r.url.path.endswith("/Group")]


@pytest.mark.parametrize("member_search", [True, False], ids=["member-searched", "member-ignored"])
def test_the_sync_finds_the_group_holding_every_matched_patient_remembers_it_and_exports_it(
        client, engine, settings, two, ehr, member_search):
    ehr.member_search = member_search  # False: the upstream lists every Group; the members are checked here
    ehr.groups = {"everyone": ["up-1", "up-2", "up-3", "up-4"], "trial": ["up-1", "up-2"], "other": ["up-1", "up-9"]}
    for i in range(3):
        ehr.observation(f"a{i}", "up-1", value=10.0 + i)
        ehr.observation(f"b{i}", "up-2", value=20.0 + i)
    ehr.observation("x1", "up-3")  # in "everyone" only, not ours
    with ehr.mocked():
        first = run_sync(engine, settings, "ehr")
    assert (first.mode, first.group, first.group_found) == ("bulk", "trial", "discovered")
    assert (first.created, first.by_search, first.kick_offs, first.files) == (6, 0, 1, 1)
    assert not [r for r in ehr.searches if r.url.path.endswith("/Observation")]  # no search: the export
    assert "_since" not in ehr.kick_offs[0].url.params
    assert ehr.kick_offs[0].url.params["_type"] == "Observation"
    assert ehr.deleted_jobs == ["1"]  # deleted once every file was stored
    assert sorted(_stored(client, two[0]["patient"])) == ["a0", "a1", "a2"]
    assert sorted(_stored(client, two[1]["patient"])) == ["b0", "b1", "b2"]
    [listed] = list_sources(engine)
    assert (listed["mode"], listed["group"], listed["discovered_group"]) == ("auto", None, "trial")
    [report] = status(engine, "ehr")
    assert report["group"] == "trial" and report["export"] is None
    since = report["since"]
    assert since is not None

    ehr.observation("a3", "up-1", value=14.0)
    ehr.searches.clear()
    with ehr.mocked():
        second = run_sync(engine, settings, "ehr")
    assert (second.group, second.group_found, second.created, second.by_search) == ("trial", "remembered", 1, 0)
    assert _group_requests(ehr) == []  # the remembered Group was read, not looked for again
    assert ehr.kick_offs[1].url.params["_since"] == since  # the previous manifest's transactionTime
    assert _total(client, two[0]["patient"]) == 4


def test_a_group_holding_some_matched_patients_is_exported_and_the_others_are_searched(
        client, engine, settings, two, ehr):
    ehr.groups = {"ward": ["up-1", "up-7"]}
    ehr.observation("a1", "up-1")
    ehr.observation("b1", "up-2", value=21.0)
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    assert (counts.mode, counts.group, counts.by_search, counts.created) == ("bulk", "ward", 1, 2)
    searched = {r.url.params.get("patient") for r in ehr.searches if r.url.path.endswith("/Observation")}
    assert searched == {"up-2"}
    assert sorted(_stored(client, two[0]["patient"])) == ["a1"]
    assert sorted(_stored(client, two[1]["patient"])) == ["b1"]


@pytest.mark.parametrize("upstream", ["no-group-fits", "no-group-search"])
def test_without_a_group_holding_a_matched_patient_the_sync_searches(client, engine, settings, two, ehr, upstream):
    if upstream == "no-group-fits":
        ehr.groups = {"other": ["up-8", "up-9"]}
    else:
        ehr.group_search = False
    ehr.observation("a1", "up-1")
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    assert (counts.mode, counts.group, counts.bulk_offered, counts.created) == ("search", None, True, 1)
    assert counts.fallback is not None and not ehr.kick_offs
    assert sorted(_stored(client, two[0]["patient"])) == ["a1"]
    assert list_sources(engine)[0]["discovered_group"] is None


def test_a_source_in_search_mode_never_looks_for_a_group(client, engine, settings, two):
    ehr = FakeEhr(export=True)
    ehr.add_patient("up-1", MRN, "MRN-1")
    ehr.groups = {"trial": ["up-1"]}
    ehr.observation("a1", "up-1")
    add_source(engine, "plain", EHR, pull_mode="search")
    with ehr.mocked():
        counts = run_sync(engine, settings, "plain")
    assert (counts.mode, counts.bulk_offered, counts.created) == ("search", True, 1)
    assert _group_requests(ehr) == [] and not ehr.kick_offs


def test_a_group_whose_kick_off_answers_404_is_forgotten_and_another_found(client, engine, settings, two, ehr):
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.observation("a1", "up-1")
    with ehr.mocked():
        assert run_sync(engine, settings, "ehr").group == "trial"
    # the upstream rebuilt its Groups: "trial" still reads, but can no longer be exported; "trial-2" holds them
    ehr.groups["trial-2"] = ["up-1", "up-2", "up-3"]
    ehr.observation("a2", "up-1", value=13.0)

    def kick_off(request, id):
        return ehr.kick_off(request, "gone" if id == "trial" else id)
    with ehr.mocked() as router:
        router["kick_off"].mock(side_effect=kick_off)
        counts = run_sync(engine, settings, "ehr")
    assert (counts.mode, counts.group, counts.group_found) == ("bulk", "trial-2", "discovered")
    assert counts.fallback == "the export kick-off of Group/trial answered 404"
    assert list_sources(engine)[0]["discovered_group"] == "trial-2"
    assert sorted(_stored(client, two[0]["patient"])) == ["a1", "a2"]
    [report] = status(engine, "ehr")
    assert report["status"] == "completed"


def test_a_gone_group_with_no_other_and_a_configured_gone_group_fall_back_to_search(client, engine, settings, two):
    ehr = FakeEhr(export=True)
    ehr.add_patient("up-1", MRN, "MRN-1")
    ehr.groups = {"trial": ["up-1"]}
    ehr.observation("a1", "up-1")
    add_source(engine, "found", EHR)
    add_source(engine, "named", EHR, group_id="trial")
    with ehr.mocked() as router:
        router["kick_off"].respond(410)
        found = run_sync(engine, settings, "found")
        named = run_sync(engine, settings, "named")
    for counts in (found, named):
        assert (counts.mode, counts.bulk_offered, counts.pulled) == ("search", True, 1)
        assert counts.fallback == "the export kick-off of Group/trial answered 410"
    assert sorted(_stored(client, two[0]["patient"])) == ["a1"]
    assert {s["name"]: s["discovered_group"] for s in list_sources(engine)} == {"found": None, "named": None}
    assert [r["status"] for r in status(engine)] == ["completed", "completed"]


def test_a_sync_killed_after_file_1_of_3_resumes_with_files_2_and_3_only(client, engine, settings, two, ehr):
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.per_file = 2
    for i in range(3):
        ehr.observation(f"a{i}", "up-1", value=10.0 + i)
        ehr.observation(f"b{i}", "up-2", value=20.0 + i)

    def die_after_first_file(done: int, total: int, what: str) -> None:
        if what == "export files" and done == 1:
            raise Killed()
    with ehr.mocked(), pytest.raises(Killed):
        run_sync(engine, settings, "ehr", progress=die_after_first_file)
    state = _state(engine)
    assert state is not None and state.status_url == f"{EHR}/bulkstatus/1" and state.group == "trial"
    files = list(ehr.jobs["1"]["files"])
    assert len(files) == 3 and state.done == files[:1]
    assert ehr.deleted_jobs == []  # not deleted: two files are still to be stored
    [report] = status(engine, "ehr")
    assert report["status"] == "failed" and report["export"]["files_done"] == 1
    assert _total(client, two[0]["patient"]) + _total(client, two[1]["patient"]) == 2

    ehr.downloads.clear()
    with ehr.mocked():
        resumed = run_sync(engine, settings, "ehr")
    assert resumed.resumed and resumed.kick_offs == 0 and len(ehr.kick_offs) == 1  # the same export, polled again
    assert ehr.downloads == files[1:]  # files 2-3 only
    assert (resumed.files, resumed.files_skipped, resumed.created, resumed.updated) == (2, 1, 4, 0)
    assert ehr.deleted_jobs == ["1"] and _state(engine) is None
    upstream = sorted(i for (t, i) in ehr.resources if t == "Observation")
    ours = sorted([*_stored(client, two[0]["patient"]), *_stored(client, two[1]["patient"])])
    assert ours == upstream  # the stored counts are the upstream's: no gap, no duplicate
    assert status(engine, "ehr")[0]["since"] == ehr.clock.isoformat().replace("+00:00", "Z")


def test_a_file_cut_off_half_way_is_imported_again_without_duplicates(client, engine, settings, two, ehr,
                                                                       monkeypatch):
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.per_file = 4  # pages of 2 (the tests' ehr_page_size): each file is stored in two transactions
    for i in range(4):
        ehr.observation(f"a{i}", "up-1", value=10.0 + i)
        ehr.observation(f"b{i}", "up-2", value=20.0 + i)
    ingest = Sync._ingest
    calls = [0]

    async def dies_in_file_2(self, resources, patients):
        calls[0] += bool(resources)
        if calls[0] == 4:  # file 1 stored (2 pages), file 2's first page stored: killed before its second
            raise Killed()
        await ingest(self, resources, patients)
    monkeypatch.setattr(Sync, "_ingest", dies_in_file_2)
    with ehr.mocked(), pytest.raises(Killed):
        run_sync(engine, settings, "ehr")
    monkeypatch.setattr(Sync, "_ingest", ingest)
    state = _state(engine)
    assert state is not None and len(state.done) == 1
    assert _total(client, two[0]["patient"]) + _total(client, two[1]["patient"]) == 6

    with ehr.mocked():
        resumed = run_sync(engine, settings, "ehr")
    # file 2 again from its start: its first two resources are already here, unchanged (no new version)
    assert (resumed.files, resumed.created, resumed.unchanged, resumed.updated) == (1, 2, 2, 0)
    stored = {**_stored(client, two[0]["patient"]), **_stored(client, two[1]["patient"])}
    assert sorted(stored) == sorted(i for (t, i) in ehr.resources if t == "Observation")
    assert {r["meta"]["versionId"] for r in stored.values()} == {"1"}


def test_an_export_the_upstream_forgot_is_kicked_off_again_with_the_same_since(client, engine, settings, two, ehr):
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.observation("a0", "up-1")
    with ehr.mocked():
        run_sync(engine, settings, "ehr")
    since = status(engine, "ehr")[0]["since"]
    ehr.per_file = 1
    for i in range(1, 4):
        ehr.observation(f"a{i}", "up-1", value=10.0 + i)

    def die_after_first_file(done: int, total: int, what: str) -> None:
        if what == "export files" and done == 1:
            raise Killed()
    with ehr.mocked(), pytest.raises(Killed):
        run_sync(engine, settings, "ehr", progress=die_after_first_file)
    state = _state(engine)
    assert state is not None and state.since == since and len(state.done) == 1
    ehr.forget(state.status_url.rsplit("/", 1)[-1])  # the upstream restarted and lost its jobs
    with ehr.mocked():
        again = run_sync(engine, settings, "ehr")
    assert again.resumed and again.kick_offs == 1
    assert [r.url.params["_since"] for r in ehr.kick_offs[1:]] == [since, since]
    assert (again.created, again.unchanged, again.files) == (2, 1, 3)  # file 1 of the lost export: stored already
    assert sorted(_stored(client, two[0]["patient"])) == ["a0", "a1", "a2", "a3"]
    assert _state(engine) is None and status(engine, "ehr")[0]["since"] > since


def test_a_patient_enrolled_after_an_export_gets_their_earlier_results_by_search(client, engine, settings, ehr):
    first = enrol(client, mrn="MRN-1")
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.observation("a1", "up-1")
    ehr.observation("b1", "up-2", value=21.0)  # before the first export's transactionTime
    with ehr.mocked():
        run_sync(engine, settings, "ehr")
    second = enrol(client, mrn="MRN-2", study_id=first["study"])  # enrolled here now
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    # the export `_since` the last transactionTime would not carry b1: it comes by search
    assert (counts.mode, counts.by_search, counts.created) == ("bulk", 1, 1)
    assert sorted(_stored(client, second["patient"])) == ["b1"]
    with ehr.mocked():
        third = run_sync(engine, settings, "ehr")
    assert (third.by_search, third.created) == (0, 0)  # covered by the export now


def test_sync_run_and_status_say_which_group_was_exported(cli, client, two):
    ehr = FakeEhr(export=True)
    ehr.add_patient("up-1", MRN, "MRN-1")
    ehr.groups = {"trial": ["up-1"]}
    ehr.observation("a1", "up-1")
    assert cli("sources", "add", "ehr", "--base", EHR)[0] == 0
    with ehr.mocked():
        code, out, err = cli("sync", "run")
    assert code == 0, err
    assert "1 created" in out and "Bulk Data of Group/trial (discovered)" in out
    code, out, _ = cli("sources", "list")
    assert code == 0 and "Group/trial found" in out
    code, out, _ = cli("sync", "status", "--json")
    [report] = orjson.loads(out)
    assert (report["group"], report["counts"]["group_found"], report["export"]) == ("trial", "discovered", None)


def test_sources_add_takes_no_bulk_and_refuses_a_group_with_search_mode(cli):
    code, out, _ = cli("sources", "add", "a", "--base", EHR)
    assert code == 0 and "auto: bulk when offered" in out
    code, out, _ = cli("sources", "add", "b", "--base", EHR, "--no-bulk")
    assert code == 0 and "search" in out
    code, _, err = cli("sources", "add", "c", "--base", EHR, "--mode", "search", "--group", "g")
    assert code == 1 and "--group forces Bulk Data" in err
    code, _, err = cli("sources", "add", "d", "--base", EHR, "--mode", "sometimes")
    assert code == 1 and "--mode: one of auto, search" in err
    code, out, _ = cli("sources", "list", "--json")
    assert {s["name"]: s["mode"] for s in orjson.loads(out)} == {"a": "auto", "b": "search"}
    code, out, _ = cli("sources", "add", "--help")
    assert code == 0 and "--no-bulk" in out and "--mode" in out and "--group" in out


def test_an_interrupted_export_whose_group_is_gone_is_deleted_upstream_and_the_sync_searches(
        client, engine, settings, two, ehr):
    ehr.groups = {"trial": ["up-1", "up-2"]}
    ehr.per_file = 1
    for i in range(3):
        ehr.observation(f"a{i}", "up-1", value=10.0 + i)

    def die_after_first_file(done: int, total: int, what: str) -> None:
        if what == "export files" and done == 1:
            raise Killed()
    with ehr.mocked(), pytest.raises(Killed):
        run_sync(engine, settings, "ehr", progress=die_after_first_file)
    del ehr.groups["trial"]  # the upstream dropped the Group; no other holds our patients
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    assert (counts.mode, counts.bulk_offered, counts.kick_offs) == ("search", True, 0)
    assert ehr.deleted_jobs == ["1"] and _state(engine) is None  # the left export: deleted, not resumed
    assert sorted(_stored(client, two[0]["patient"])) == ["a0", "a1", "a2"]
    assert list_sources(engine)[0]["discovered_group"] is None
