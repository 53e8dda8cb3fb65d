"""The SDTM files: Dataset-JSON v1.1, SAS XPORT v5 (pyreadstat) and Define-XML 2.1 (xml.etree).

A dataset is written in two steps so memory stays flat: its rows go to a scratch file as they are made (one JSON
array per line) while the longest value of each column and the record count are kept; then the file is written
with its metadata first (Dataset-JSON needs `records` and each string column's `length` before the rows).
"""

import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from xml.etree import ElementTree as ET

import orjson

from fhir_mappings.sdtm import DOMAINS, Row, Variable

DATASET_JSON_VERSION = "1.1.0"
ORIGINATOR = "trial-fhir"
MDV = "MDV.TRIAL-FHIR.SDTMIG.3.4"
XPT_MAX = 200  # a character value's most bytes in XPORT v5


@dataclass
class Dataset:
    """One dataset as it is being made: rows in a scratch file, the longest value (bytes) of each column."""

    domain: str
    label: str = ""
    variables: tuple[Variable, ...] = ()
    standard: str = "SDTM"  # SDTM | ADaM
    scratch: IO[bytes] | None = None
    records: int = 0
    lengths: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.variables:
            self.label, self.variables = DOMAINS[self.domain]
        self._names = [v.name for v in self.variables]
        self._string_columns = [(i, v.name) for i, v in enumerate(self.variables) if v.type == "string"]
        self.lengths = {name: 0 for _, name in self._string_columns}

    def add(self, row: Row) -> None:
        self.add_many([row])

    def add_many(self, rows: Sequence[Row]) -> None:
        """Rows (dicts by variable name) appended in the variables' order; the longest string (UTF-8 bytes) of
        each column kept, a column at a time."""
        if not rows:
            return
        names = self._names
        values = [[row.get(n) for n in names] for row in rows]
        lengths = self.lengths
        for i, name in self._string_columns:
            column = [v[i] for v in values if v[i]]
            if column:
                longest = max(map(len, map(str.encode, map(str, column))))
                if longest > lengths[name]:
                    lengths[name] = longest
        if self.scratch is None:
            self.scratch = tempfile.TemporaryFile()
        self.scratch.write(b"\n".join(map(orjson.dumps, values)) + b"\n")
        self.records += len(rows)

    def lines(self) -> Iterator[bytes]:
        """Each row as the JSON array it was written as (no line break)."""
        if self.scratch is None:
            return
        self.scratch.seek(0)
        for line in self.scratch:
            yield line.rstrip(b"\n")

    def rows(self) -> Iterator[list[Any]]:
        for line in self.lines():
            yield orjson.loads(line)

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None


def iso(at: datetime) -> str:
    """A creation time in UTC, to the second (`at`: UTC, naive or aware)."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_dataset_json(dataset: Dataset, out: IO[bytes], *, study_oid: str, created: datetime) -> None:
    """Dataset-JSON v1.1: metadata, then one array per row (streamed from the scratch file)."""
    columns = []
    for v in dataset.variables:
        column: dict[str, Any] = {"itemOID": f"IT.{dataset.domain}.{v.name}", "name": v.name, "label": v.label,
                                  "dataType": v.type}
        if v.type == "string":
            column["length"] = max(1, dataset.lengths.get(v.name, 1))
        if v.key is not None:
            column["keySequence"] = v.key
        columns.append(column)
    head = {"datasetJSONCreationDateTime": iso(created), "datasetJSONVersion": DATASET_JSON_VERSION,
            "fileOID": f"{ORIGINATOR}/{study_oid}/{dataset.domain}", "dbLastModifiedDateTime": iso(created),
            "originator": ORIGINATOR, "sourceSystem": {"name": ORIGINATOR, "version": _version()},
            "studyOID": study_oid, "metaDataVersionOID": MDV, "metaDataRef": "define.xml",
            "itemGroupOID": f"IG.{dataset.domain}", "records": dataset.records, "name": dataset.domain,
            "label": dataset.label, "columns": columns}
    text = orjson.dumps(head)
    out.write(text[:-1] + b',"rows":[')
    for i, line in enumerate(dataset.lines()):
        out.write((b",\n" if i else b"\n") + line)
    out.write(b"]}\n")


_XPT_STAMP = re.compile(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d")


def write_xpt(dataset: Dataset, path: Path, *, created: datetime) -> None:
    """SAS XPORT version 5 (pyreadstat): names of 8 characters, labels of 40, character values of at most 200
    bytes (longer ones cut). Its header stamps (created, modified) are `created`, not the clock, so the same data
    gives the same bytes."""
    import pandas as pd
    import pyreadstat

    names = [v.name for v in dataset.variables]
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for values in dataset.rows():
        for name, variable, value in zip(names, dataset.variables, values, strict=True):
            if variable.type == "string":
                columns[name].append(_ascii(value))
            else:
                columns[name].append(float("nan") if value is None else float(value))
    frame = pd.DataFrame({n: pd.Series(columns[n], dtype=object if v.type == "string" else "float64")
                          for n, v in zip(names, dataset.variables, strict=True)})
    pyreadstat.write_xport(frame, str(path), file_label=dataset.label[:40],
                           column_labels=[v.label[:40] for v in dataset.variables], table_name=dataset.domain,
                           file_format_version=5)
    data = path.read_bytes()
    stamp = created.strftime("%d%b%y:%H:%M:%S").upper().encode()
    head, rest = data[:80 * 8], data[80 * 8:]  # the library and member headers hold the stamps
    path.write_bytes(_XPT_STAMP.sub(stamp, head) + rest)


def _ascii(value: Any) -> str:
    """A character value for XPORT: ASCII (× as x, µ as u, other characters as ?) and at most 200 bytes."""
    text = "" if value is None else str(value)
    text = text.replace("×", "x").replace("µ", "u").replace("³", "3").replace("⁹", "9")
    return text.encode("ascii", "replace").decode()[:XPT_MAX]


# -- Define-XML 2.1 ------------------------------------------------------------------------------------------

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
_DEFINE_TYPES = {"string": "text", "integer": "integer", "float": "float"}


def define_xml(datasets: Sequence[Dataset], *, study_oid: str, title: str, created: datetime) -> bytes:
    """Define-XML 2.1 of the datasets written: one ItemGroupDef per dataset (its file, class, keys), one ItemDef
    per variable (type, length, label, origin)."""
    ET.register_namespace("", ODM_NS)
    ET.register_namespace("def", DEF_NS)
    ET.register_namespace("xlink", XLINK_NS)
    o, d, x = f"{{{ODM_NS}}}", f"{{{DEF_NS}}}", f"{{{XLINK_NS}}}"
    odm = ET.Element(f"{o}ODM", {"FileType": "Snapshot", "FileOID": f"{ORIGINATOR}/{study_oid}/define",
                                 "ODMVersion": "1.3.2", "CreationDateTime": iso(created), "Originator": ORIGINATOR,
                                 "SourceSystem": ORIGINATOR, "SourceSystemVersion": _version(),
                                 f"{d}Context": "Submission"})
    study = ET.SubElement(odm, f"{o}Study", {"OID": study_oid})
    glob = ET.SubElement(study, f"{o}GlobalVariables")
    ET.SubElement(glob, f"{o}StudyName").text = study_oid
    ET.SubElement(glob, f"{o}StudyDescription").text = title or study_oid
    ET.SubElement(glob, f"{o}ProtocolName").text = study_oid
    mdv = ET.SubElement(study, f"{o}MetaDataVersion", {"OID": MDV, "Name": f"SDTM of {study_oid}",
                                                       f"{d}DefineVersion": "2.1.0"})
    standards = ET.SubElement(mdv, f"{d}Standards")
    ET.SubElement(standards, f"{d}Standard", {"OID": "STD.SDTMIG.3.4", "Name": "SDTMIG", "Type": "IG",
                                              "Version": "3.4", "Status": "Final"})
    items: list[tuple[str, Variable, int]] = []
    for ds in datasets:
        group = ET.SubElement(mdv, f"{o}ItemGroupDef", {
            "OID": f"IG.{ds.domain}", "Name": ds.domain, "SASDatasetName": ds.domain[:8],
            "Repeating": "No" if ds.domain in ("DM",) else "Yes", "IsReferenceData": "Yes" if ds.domain in
            ("TS", "TA", "TE", "TV") else "No", "Purpose": "Tabulation", f"{d}Structure": _structure(ds.domain),
            f"{d}StandardOID": "STD.SDTMIG.3.4", f"{d}ArchiveLocationID": f"LF.{ds.domain}"})
        if not ds.domain.startswith("SUPP") and ds.domain not in ("TS", "TA", "TE", "TV"):
            group.set("Domain", ds.domain)
        ET.SubElement(ET.SubElement(group, f"{o}Description"), f"{o}TranslatedText",
                      {"xml:lang": "en"}).text = ds.label
        for order, v in enumerate(ds.variables, start=1):
            ref = {"ItemOID": f"IT.{ds.domain}.{v.name}", "OrderNumber": str(order),
                   "Mandatory": "Yes" if v.key is not None else "No"}
            if v.key is not None:
                ref["KeySequence"] = str(v.key)
            ET.SubElement(group, f"{o}ItemRef", ref)
            items.append((ds.domain, v, max(1, ds.lengths.get(v.name, 1))))
        ET.SubElement(group, f"{d}Class", {"Name": _class(ds.domain)})
        leaf = ET.SubElement(group, f"{d}leaf", {"ID": f"LF.{ds.domain}", f"{x}href": f"{ds.domain.lower()}.xpt"})
        ET.SubElement(leaf, f"{d}title").text = f"{ds.domain.lower()}.xpt"
    for domain, v, length in items:
        attrs = {"OID": f"IT.{domain}.{v.name}", "Name": v.name, "SASFieldName": v.name,
                 "DataType": _DEFINE_TYPES[v.type]}
        if v.type == "string":
            attrs["Length"] = str(min(length, XPT_MAX))
        item = ET.SubElement(mdv, f"{o}ItemDef", attrs)
        ET.SubElement(ET.SubElement(item, f"{o}Description"), f"{o}TranslatedText", {"xml:lang": "en"}).text = v.label
        ET.SubElement(item, f"{d}Origin", {"Type": v.origin})
    ET.indent(odm)
    return ET.tostring(odm, encoding="UTF-8", xml_declaration=True) + b"\n"


def _structure(domain: str) -> str:
    return {"DM": "One record per subject", "SV": "One record per subject per actual visit",
            "QS": "One record per question per visit per subject", "LB": "One record per lab test per time point "
            "per visit per subject", "AE": "One record per adverse event per subject",
            "DS": "One record per disposition status per subject", "EX": "One record per constant dosing interval "
            "per subject", "TS": "One record per trial summary parameter value", "TA": "One record per planned "
            "Element per Arm", "TE": "One record per planned Element", "TV": "One record per planned Visit per Arm"
            }.get(domain, "One record per IDVAR, IDVARVAL, and QNAM value per subject")


def _class(domain: str) -> str:
    if domain.startswith("SUPP"):
        return "RELATIONSHIP"
    return {"DM": "SPECIAL PURPOSE", "SV": "SPECIAL PURPOSE", "QS": "FINDINGS", "LB": "FINDINGS", "AE": "EVENTS",
            "DS": "EVENTS", "EX": "INTERVENTIONS"}.get(domain, "TRIAL DESIGN")


def _version() -> str:
    from service.ops.version import version
    return version()
