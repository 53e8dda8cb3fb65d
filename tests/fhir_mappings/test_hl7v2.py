"""HL7 v2 ORU^R01 -> FHIR transaction Bundle, and the ACK: pure, no database."""

import pytest

from fhir_mappings import hl7v2
from fhir_mappings.outcome import issue
from tests.hl7.messages import errs, msa, obx, oru

LOCAL = "urn:trial-fhir:hl7v2:SNUH-LAB:code:L"


def bundle_of(text: str | bytes, translations=None, zone=None) -> tuple[dict, list[hl7v2.Problem]]:
    message = hl7v2.read_message(text if isinstance(text, bytes) else text.encode())
    bundle, warnings, _ = hl7v2.to_bundle(message, patient="Patient/p1", translations=translations or {}, zone=zone)
    return bundle, warnings


def first_observation(text: str | bytes, **kw) -> dict:
    return bundle_of(text, **kw)[0]["entry"][0]["resource"]


def test_nm_becomes_a_quantity_with_ucum_unit_range_and_interpretation():
    obs = first_observation(oru("M1"))
    assert obs["valueQuantity"] == {"value": 1520, "unit": "kIU/L", "system": "http://unitsofmeasure.org",
                                    "code": "k[IU]/L"}
    assert obs["referenceRange"][0]["text"] == "0-100"
    assert obs["referenceRange"][0]["low"]["value"] == 0 and obs["referenceRange"][0]["high"]["value"] == 100
    assert obs["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": "19113-0", "display": "IgE"}
    assert obs["subject"] == {"reference": "Patient/p1"}
    assert obs["status"] == "final"


def test_result_identifier_is_filler_order_number_code_and_sub_id_and_the_entry_a_conditional_update():
    bundle, _ = bundle_of(oru("M1", [obx(1, sub_id="2")], filler="F-9"))
    item = bundle["entry"][0]
    assert item["resource"]["identifier"] == [{"system": "urn:trial-fhir:hl7v2:SNUH-LAB:result",
                                               "value": "F-9/19113-0/2"}]
    assert item["request"] == {"method": "PUT", "url": "Observation?identifier=urn:trial-fhir:hl7v2:SNUH-LAB:result"
                                                      "|F-9/19113-0/2"}
    assert item["resource"]["meta"]["source"] == "urn:trial-fhir:hl7v2:SNUH-LAB:message:MSG00001"


def test_a_provenance_names_the_sending_facility_message_id_and_every_result():
    bundle, _ = bundle_of(oru("M1", [obx(1), obx(2, code="711-2^Eos^LN", unit="10*3/uL")], control_id="C-77"))
    provenance = bundle["entry"][-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    assert [t["reference"] for t in provenance["target"]] == [e["fullUrl"] for e in bundle["entry"][:2]]
    assert provenance["agent"][0]["who"]["display"] == "SNUH-LAB"
    assert provenance["entity"][0]["what"]["identifier"]["value"] == "C-77"
    assert provenance["recorded"] == "2024-02-01T09:30:00+09:00"


@pytest.mark.parametrize("value, expected", [
    (">^10", {"valueQuantity": {"value": 10, "comparator": ">"}}),
    ("<=^0.5", {"valueQuantity": {"value": 0.5, "comparator": "<="}}),
    ("^7", {"valueQuantity": {"value": 7}}),
    ("=^7", {"valueQuantity": {"value": 7}}),
    ("^10^-^20", {"valueRange": {"low": {"value": 10}, "high": {"value": 20}}}),
    ("^1^:^128", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}),
])
def test_sn_forms(value, expected):
    obs = first_observation(oru("M1", [obx(1, kind="SN", value=value, unit="")]))
    assert {k: v for k, v in obs.items() if k.startswith("value")} == expected


@pytest.mark.parametrize("value", ["<>^5", "^abc", "^1^+"])
def test_sn_that_fhir_cannot_say_is_not_stored_naming_obx_5(value):
    with pytest.raises(hl7v2.NotStored) as failed:
        bundle_of(oru("M1", [obx(1, kind="SN", value=value, unit="")]))
    assert failed.value.problems[0].location == "OBX^1^5"


def test_coded_text_and_date_values():
    results = [obx(1, kind="CWE", code="19113-0^IgE^LN", value="POS^Positive^HL70078", unit=""),
               obx(2, kind="ST", code="711-2^Eos^LN", value="see note \\T\\ comment", unit=""),
               obx(3, kind="TX", code="713-8^Eos%^LN", value="line one~line two", unit=""),
               obx(4, kind="DTM", code="26449-9^Eos^LN", value="202402011015+0900", unit="")]
    entries = bundle_of(oru("M1", results))[0]["entry"]
    assert entries[0]["resource"]["valueCodeableConcept"]["coding"][0]["code"] == "POS"
    assert entries[0]["resource"]["valueCodeableConcept"]["text"] == "Positive"
    assert entries[1]["resource"]["valueString"] == "see note & comment"
    assert entries[2]["resource"]["valueString"] == "line one\nline two"
    assert entries[3]["resource"]["valueDateTime"] == "2024-02-01T10:15:00+09:00"


def test_unsupported_value_type_names_obx_5():
    with pytest.raises(hl7v2.NotStored) as failed:
        bundle_of(oru("M1", [obx(1, kind="ED", value="x")]))
    assert "OBX-2 value type 'ED' is not supported" in failed.value.problems[0].text


@pytest.mark.parametrize("code, status", [("F", "final"), ("C", "corrected"), ("A", "amended"),
                                          ("P", "preliminary"), ("X", "cancelled"), ("D", "entered-in-error"),
                                          ("W", "entered-in-error"), ("R", "preliminary"), ("I", "registered")])
def test_obx_11_statuses(code, status):
    assert first_observation(oru("M1", [obx(1, status=code)]))["status"] == status


@pytest.mark.parametrize("code", ["Z", ""])
def test_an_unknown_status_is_never_final_and_warned_in_the_ack(code):
    bundle, warnings = bundle_of(oru("M1", [obx(1, status=code)]))
    assert bundle["entry"][0]["resource"]["status"] == "unknown"
    assert warnings[0].severity == "W" and warnings[0].location == "OBX^1^11"


@pytest.mark.parametrize("sent, when, zone, expected", [
    ("20240201093000+0900", "20240201083000+0900", None, "2024-02-01T08:30:00+09:00"),
    ("20240201093000+0900", "20240201083000-0500", None, "2024-02-01T08:30:00-05:00"),
    ("20240201093000+0900", "202402010830", None, "2024-02-01T08:30:00+09:00"),  # MSH-7's offset
    ("20240201093000", "20240201083000.1234", "Asia/Seoul", "2024-02-01T08:30:00.1234+09:00"),
    ("20240201093000", "20240701083000", "Europe/Berlin", "2024-07-01T08:30:00+02:00"),  # summer time
    ("20240201093000+0000", "20240201083000", None, "2024-02-01T08:30:00Z"),
    ("20240201093000", "20240201", None, "2024-02-01"),  # a date keeps its precision
    ("20240201093000", "202402", None, "2024-02"),
])
def test_effective_time_keeps_its_zone_and_precision(sent, when, zone, expected):
    obs = first_observation(oru("M1", [obx(1, when=when)], sent=sent), zone=zone)
    assert obs["effectiveDateTime"] == expected


def test_a_time_without_any_zone_is_not_stored():
    with pytest.raises(hl7v2.NotStored) as failed:
        bundle_of(oru("M1", [obx(1, when="20240201083000")], sent="20240201093000"))
    assert "no time zone offset" in failed.value.problems[0].text
    assert failed.value.problems[0].location == "OBX^1^14"


def test_obr_7_is_the_effective_time_when_obx_14_is_empty():
    assert first_observation(oru("M1", [obx(1, when="")]))["effectiveDateTime"] == "2024-02-01T08:00:00+09:00"


def test_nte_after_an_obx_is_its_note():
    obs = first_observation(oru("M1", [obx(1), "NTE|1|L|haemolysed sample", "NTE|2|L|repeat advised"]))
    assert obs["note"] == [{"text": "haemolysed sample"}, {"text": "repeat advised"}]


@pytest.mark.parametrize("charset, codec", [("UNICODE UTF-8", "utf-8"), ("8859/1", "latin-1"),
                                            ("ISO IR149", "euc_kr"), ("KS X 1001", "euc_kr")])
def test_msh_18_decides_the_character_set(charset, codec):
    name = "김지우" if codec == "euc_kr" else "Müller"
    text = oru("M1", [obx(1), f"NTE|1|L|{name}"], charset=charset)
    obs = first_observation(text.encode(codec))
    assert obs["note"] == [{"text": name}]


def test_bytes_that_are_not_the_declared_character_set_are_rejected():
    with pytest.raises(hl7v2.Rejected) as rejected:
        hl7v2.read_message(oru("M1", [obx(1), "NTE|1|L|김지우"], charset="UNICODE UTF-8").encode("euc_kr"))
    assert rejected.value.problems[0].location == "MSH^1^18"


def test_an_unknown_character_set_is_rejected():
    with pytest.raises(hl7v2.Rejected) as rejected:
        hl7v2.read_message(oru("M1", charset="EBCDIC").encode())
    assert "MSH-18 character set 'EBCDIC' is not supported" in rejected.value.problems[0].text


def test_a_sending_facility_named_msh_does_not_break_parsing():
    message = hl7v2.read_message(oru("M1", facility="MSH").encode())
    assert message.facility == "MSH" and len(message.results) == 1


def test_line_feeds_are_segment_ends_too():
    message = hl7v2.read_message(oru("M1", [obx(1), obx(2, code="711-2^Eos^LN")]).replace("\r", "\r\n").encode())
    assert len(message.results) == 2


@pytest.mark.parametrize("text, words", [
    (b"not hl7 at all", "does not begin with an MSH segment"),
    (oru("M1", message_type="ADT^A01").encode(), "MSH-9 message type 'ADT^A01' is not supported"),
    (oru("M1", message_type="ORU^R30").encode(), "trigger event 'R30' is not supported"),
    (oru("M1", control_id="").encode(), "MSH-10 message control id is missing"),
    (oru("M1", results=[]).encode(), "no OBX segment"),
])
def test_malformed_or_unsupported_messages_are_rejected(text, words):
    with pytest.raises(hl7v2.Rejected) as rejected:
        hl7v2.read_message(text)
    assert any(words in p.text for p in rejected.value.problems)


def test_local_codes_are_mapped_by_the_translations_and_unmapped_ones_named():
    text = oru("M1", [obx(1, code="IGE^IgE total^L"), obx(2, code="XYZ^Other^L")])
    message = hl7v2.read_message(text.encode())
    assert hl7v2.local_codes(message) == {(LOCAL, "IGE"), (LOCAL, "XYZ")}
    with pytest.raises(hl7v2.NotStored) as failed:
        hl7v2.to_bundle(message, patient="Patient/p1",
                        translations={(LOCAL, "IGE"): [{"system": "http://loinc.org", "code": "19113-0"}]})
    assert [p.location for p in failed.value.problems] == ["OBX^2^3"]
    bundle, _, _ = hl7v2.to_bundle(hl7v2.read_message(oru("M1", [obx(1, code="IGE^IgE total^L")]).encode()),
                                   patient="Patient/p1",
                                   translations={(LOCAL, "IGE"): [{"system": "http://loinc.org", "code": "19113-0"}]})
    assert bundle["entry"][0]["resource"]["code"]["coding"] == [
        {"system": LOCAL, "code": "IGE", "display": "IgE total"}, {"system": "http://loinc.org", "code": "19113-0"}]


def test_a_loinc_alternate_code_needs_no_map():
    obs = first_observation(oru("M1", [obx(1, code="IGE^IgE total^L^19113-0^IgE^LN")]))
    assert obs["code"]["coding"][1] == {"system": "http://loinc.org", "code": "19113-0", "display": "IgE"}


def test_two_obx_of_one_result_are_refused():
    with pytest.raises(hl7v2.NotStored) as failed:
        bundle_of(oru("M1", [obx(1), obx(2)]))
    assert failed.value.problems[0].location == "OBX^2^4"


def test_patient_identifier_uses_the_first_known_authority():
    message = hl7v2.read_message(oru("MRN-1").replace("MRN-1^^^SNUH^MR", "X-9^^^OTHER^MR~MRN-1^^^SNUH^MR").encode())
    assert hl7v2.patient_identifier(message, {"SNUH": "urn:oid:1"}) == ("urn:oid:1", "MRN-1")
    with pytest.raises(hl7v2.NotStored) as failed:
        hl7v2.patient_identifier(message, {"ELSE": "urn:oid:2"})
    assert "OTHER, SNUH" in failed.value.problems[0].text


def test_err_segments_carry_the_outcome_issues_words_and_locate_them():
    message = hl7v2.read_message(oru("M1", [obx(1), obx(2, code="711-2^Eos^LN")]).encode())
    _, _, where = hl7v2.to_bundle(message, patient="Patient/p1", translations={})
    issues = [issue("value", "EASI | 80 is outside 0…72", "Bundle.entry[1].resource.valueQuantity.value"),
              issue("not-found", "Observation.subject: matches no Patient", "Bundle.entry[0].resource.subject")]
    problems = hl7v2.problems_from_issues(issues, where)
    ack = hl7v2.ack(message.parsed, message.charset, "AE", problems, "A1")
    assert msa(ack) == ["AE", "MSG00001"]
    found = errs(ack)
    assert [e[2] for e in found] == ["OBX^2^5", "PID^1^3"]
    assert [e[3].split("^")[0] for e in found] == ["102", "204"]
    assert found[0][7] == "EASI \\F\\ 80 is outside 0…72"  # the words, delimiters escaped
    assert found[0][6] == "Bundle.entry[1].resource.valueQuantity.value"
    assert "|UNICODE UTF-8" in ack.split("\r")[0]


def test_an_ack_of_an_unreadable_message_still_has_msh_and_msa():
    ack = hl7v2.ack(None, "", "AR", [hl7v2.Problem("100", "garbage")], "A2")
    assert ack.startswith("MSH|^~\\&|TRIAL-FHIR|") and msa(ack) == ["AR", ""]
    assert hl7v2.ack_code(ack) == "AR"
