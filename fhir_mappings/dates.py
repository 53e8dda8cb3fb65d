"""FHIR date/dateTime strings read as the trial needs them: the instant (UTC) and the local date."""

from datetime import UTC, date, datetime


def parse_datetime(value: str | None) -> tuple[datetime | None, date | None]:
    """(instant in UTC or None, local date as written or None). Partial dates (YYYY, YYYY-MM) give neither:
    a result dated only to the month can't be placed in a visit window."""
    if not value or len(value) < 10:
        return None, None
    try:
        local = date.fromisoformat(value[:10])
    except ValueError:
        return None, None
    if len(value) == 10:
        return datetime(local.year, local.month, local.day, tzinfo=UTC), local
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None, local
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC), local


def parse_date(value: str | None) -> date | None:
    return parse_datetime(value)[1]


def fhir_instant(moment: datetime) -> str:
    """An R4 `instant` with millisecond precision and an explicit UTC offset."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
