"""The dashboard's figures: every study the caller may see, with its enrolment, data completeness per visit, latest
results and adverse events by seriousness, gathered through the interaction core (service/core/interactions.py)
with the request's Context, so each piece is limited and audited as the same request to the API would be.

Studies come from a ResearchStudy search (`s` on ResearchStudy: without it the whole page is a 403); for each, the
summary and the progress figures (`r` on Observation, AdverseEvent and ResearchSubject) and the latest results
(an Observation search, `s` on Observation). A piece the caller may not have is left out with the reason, not an
error: a client may see studies and not their figures.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from fhir_mappings.terminology import Catalogue, load_catalogue
from service.catalogue.compiled import compiled_catalogue
from service.core.context import Context
from service.core.interactions import Core
from service.errors import FhirError
from service.stats.charts import chart_keys
from service.stats.schemas import StudyProgress, StudySummary

MAX_STUDIES = 100
LATEST_RESULTS = 8
VISIT_TAG = "https://trial-fhir.org/CodeSystem/visit"


@dataclass(frozen=True)
class LatestResult:
    when: str
    subject: str
    measure: str
    value: str
    unit: str
    visit: str
    status: str


@dataclass
class StudyCard:
    id: str
    title: str
    status: str
    identifiers: list[str]
    summary: StudySummary | None = None
    progress: StudyProgress | None = None
    latest: list[LatestResult] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)  # (key, label)
    refused: list[str] = field(default_factory=list)  # what is left out, and why
    latest_shown: bool = True  # False: the caller may not search this study's Observations


@dataclass
class Overview:
    studies: list[StudyCard]
    more: bool  # more studies than shown (MAX_STUDIES)
    deidentified: bool
    min_cell: int | None


async def overview(core: Core, ctx: Context) -> Overview:
    """The dashboard's content for the caller of `ctx` (a FhirError when it may not search studies at all)."""
    found = orjson.loads(await core.search(ctx, "ResearchStudy", [("_count", str(MAX_STUDIES))]))
    cards = [await _card(core, ctx, entry["resource"]) for entry in found.get("entry", [])
             if entry.get("search", {}).get("mode", "match") == "match"]
    more = any(link.get("relation") == "next" for link in found.get("link", []))
    return Overview(studies=sorted(cards, key=lambda c: c.title.lower()), more=more,
                    deidentified=ctx.caller.deidentified, min_cell=core.settings.deid_min_cell
                    if ctx.caller.deidentified else None)


async def _card(core: Core, ctx: Context, study: dict[str, Any]) -> StudyCard:
    sid = study["id"]
    card = StudyCard(id=sid, title=study.get("title") or sid, status=study.get("status", ""),
                     identifiers=[i["value"] for i in study.get("identifier", []) if i.get("value")])
    try:
        card.summary = await core.study_summary(ctx, sid)
        card.progress = await core.study_progress(ctx, sid)
    except FhirError as refused:
        card.refused.append(f"Figures: {refused}")
    catalogue = compiled_catalogue(card.summary.catalogue, card.summary.catalogue_version) if card.summary \
        else load_catalogue()
    if card.summary is not None:
        units = {m.key: m.unit_display or m.unit for m in card.summary.measures}
        card.charts = [(key, f"{key} ({units[key]})" if key in units else key) for key in chart_keys(card.summary)]
    try:
        bundle = orjson.loads(await core.search(ctx, "Observation", [
            ("study", f"ResearchStudy/{sid}"), ("_sort", "-date"), ("_count", str(LATEST_RESULTS))]))
        card.latest = [latest_result(e["resource"], catalogue) for e in bundle.get("entry", [])
                       if e.get("resource", {}).get("resourceType") == "Observation"]
    except FhirError as refused:
        card.refused.append(f"Latest results: {refused}")
        card.latest_shown = False
    return card


def latest_result(observation: dict[str, Any], catalogue: Catalogue) -> LatestResult:
    """One Observation as a row a person reads: the measure's name, the value with its unit as people write it
    (as sent: `valueQuantity.code`, else `.unit`), the visit it was assigned to."""
    coding = (observation.get("code", {}).get("coding") or [{}])
    measure = next((m for c in coding if (m := catalogue.measure_for(c.get("system"), c.get("code")))), None)
    quantity = observation.get("valueQuantity") or {}
    value = quantity.get("value")
    when = observation.get("effectiveDateTime") or (observation.get("effectivePeriod") or {}).get("start") or ""
    visit = next((t.get("code", "") for t in observation.get("meta", {}).get("tag", [])
                  if t.get("system") == VISIT_TAG), "")
    return LatestResult(
        when=_day(when), subject=(observation.get("subject") or {}).get("reference", ""),
        measure=measure.display if measure else (coding[0].get("display") or coding[0].get("code") or "?"),
        value="" if value is None else f"{value:g}" if isinstance(value, float) else str(value),
        unit=catalogue.unit_display(quantity.get("code") or quantity.get("unit")), visit=visit,
        status=observation.get("status", ""))


def _day(value: str) -> str:
    """A FHIR dateTime as a person reads it: the date, and the time (UTC) when there is one."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%d %H:%M") if "T" in value else parsed.strftime("%Y-%m-%d")
