"""Bundles built around stored JSON text: entries are embedded as they are (orjson.Fragment), never re-parsed."""

from collections.abc import Sequence
from typing import Any

import orjson


def entry(full_url: str, content: str | bytes | None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"fullUrl": full_url}
    if content is not None:
        item["resource"] = orjson.Fragment(content)
    item.update((k, v) for k, v in extra.items() if v is not None)
    return item


def bundle(bundle_type: str, entries: list[dict[str, Any]], *, total: int | None = None,
           links: Sequence[tuple[str, str]] = (),
           timestamp: str | None = None, id: str | None = None) -> bytes:
    data: dict[str, Any] = {"resourceType": "Bundle"}
    if id:
        data["id"] = id
    data["type"] = bundle_type
    if timestamp:
        data["timestamp"] = timestamp
    if total is not None:
        data["total"] = total
    if links:
        data["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        data["entry"] = entries
    return orjson.dumps(data)
