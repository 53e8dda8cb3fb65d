"""What a reader of the dashboard sees, parsed from its HTML (no browser): per study section, the rows of each
card's table keyed by their data attribute, the links and buttons, the slots, and every URL the page loads."""

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class StudySection:
    id: str
    title: str = ""
    rows: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (data-arm|visit|seriousness, value) -> cells
    latest: list[list[str]] = field(default_factory=list)  # rows of the latest results table
    links: dict[str, str] = field(default_factory=dict)  # text -> href
    exports: list[str] = field(default_factory=list)
    slots: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class Page(HTMLParser):
    ROW_KEYS = ("data-arm", "data-visit", "data-seriousness")

    def __init__(self, html: str) -> None:
        super().__init__()
        self.studies: dict[str, StudySection] = {}
        self.loads: list[str] = []  # src/href of what the page loads or links to
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._section: StudySection | None = None
        self._row: tuple[tuple[str, str] | None, list[str]] | None = None
        self._cell: list[str] | None = None
        self._capture: list[str] | None = None
        self._capture_what: tuple[str, str] | None = None
        self._card = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"] or "")
        for name in ("src", "href", "action", "data-export"):
            if a.get(name) is not None:
                self.loads.append(a[name])
        if tag == "section" and "data-study" in a:
            self._section = self.studies.setdefault(a["data-study"], StudySection(a["data-study"]))
        if self._section is None:
            return
        if tag == "div" and "card" in (a.get("class") or ""):
            self._card = a["class"]
        if tag == "h2":
            self._capture, self._capture_what = [], ("title", "")
        elif tag == "a" and a.get("href"):
            self._capture, self._capture_what = [], ("link", a["href"])
        elif tag == "button" and a.get("data-export"):
            self._section.exports.append(a["data-export"])
        elif tag == "li" and a.get("data-slot"):
            self._section.slots.append(a["data-slot"])
        elif tag == "p" and a.get("class") == "refused":
            self._capture, self._capture_what = [], ("refused", "")
        elif tag == "tr":
            key = next(((k[5:], a[k]) for k in self.ROW_KEYS if k in a), None)
            self._row = (key, [])
        elif tag in ("td",) and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td",) and self._cell is not None and self._row is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._section is not None:
            key, cells = self._row
            if key is not None:
                self._section.rows[key] = cells
            elif "latest" in self._card and cells:
                self._section.latest.append(cells)
            self._row = None
        elif self._capture is not None and self._capture_what is not None and tag in ("h2", "a", "p"):
            text = " ".join("".join(self._capture).split())
            kind, value = self._capture_what
            assert self._section is not None
            if kind == "title" and tag == "h2":
                self._section.title = text
            elif kind == "link" and tag == "a":
                self._section.links[text] = value
            elif kind == "refused" and tag == "p":
                self._section.refused.append(text)
            self._capture = self._capture_what = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._capture is not None:
            self._capture.append(data)
