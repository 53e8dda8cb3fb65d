"""SMART scopes (App Launch 2.2, scopes-and-launch-context): what a token lets its client do.

v2 scopes are `system/<Type|*>.<letters>` with letters a subset of `cruds` in that order, optionally granular
with a search restriction, of which this server knows one: `?study=ResearchStudy/ID` (the study a client may see).
v1 forms are read as their v2 equivalents: `.read` = `.rs`, `.write` = `.cud`, `.*` = `.cruds`.
Scopes of other contexts (`patient/`, `user/`, `openid`, `launch`, …) are not granted by this server.
"""

import re
from dataclasses import dataclass

LETTERS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)(?:\?(.*))?$")


class ScopeError(ValueError):
    """A scope this server can't grant (the token endpoint answers `invalid_scope`)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One granted scope: a resource type (`*` for all), its interactions (`cruds` letters) and, if granular, the
    study it is limited to."""

    resource_type: str
    letters: str
    study: str | None = None

    def __str__(self) -> str:
        return f"system/{self.resource_type}.{self.letters}" + (f"?study=ResearchStudy/{self.study}"
                                                              if self.study else "")

    def covers(self, resource_type: str, letter: str) -> bool:
        return letter in self.letters and self.resource_type in ("*", resource_type)


def parse_scope(text: str) -> Scope:
    """One scope as the token carries it; ScopeError for a form this server doesn't grant."""
    m = _SCOPE.match(text)
    if m is None:
        raise ScopeError(f"unsupported scope {text!r}: expected system/<Type|*>.<cruds letters>")
    rtype, letters, query = m.groups()
    if letters in V1:
        letters = V1[letters]
    elif not letters or any(c not in LETTERS for c in letters) or "".join(sorted(letters, key=LETTERS.index)) \
            != letters or len(set(letters)) != len(letters):
        raise ScopeError(f"unsupported scope {text!r}: the letters must be a subset of 'cruds' in that order")
    study = None
    if query:
        name, _, value = query.partition("=")
        if name != "study" or not value.startswith("ResearchStudy/") or "&" in value or len(value) <= 14:
            raise ScopeError(f"unsupported scope {text!r}: the only restriction this server knows is "
                             "?study=ResearchStudy/ID")
        study = value.removeprefix("ResearchStudy/")
    return Scope(rtype, letters, study)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """A space-separated scope string (ScopeError naming the first this server can't grant)."""
    return tuple(parse_scope(s) for s in text.split())


def narrow(requested: tuple[Scope, ...], registered: tuple[Scope, ...]) -> tuple[Scope, ...]:
    """What a token is granted: each requested scope cut down to what one of the client's registered scopes allows
    (requested ∩ registered, as RFC 6749 §3.3 and SMART say); scopes nothing allows are dropped."""
    granted: list[Scope] = []
    for want in requested:
        for have in registered:
            if "*" not in (have.resource_type, want.resource_type) and have.resource_type != want.resource_type:
                continue
            letters = "".join(c for c in want.letters if c in have.letters)
            if not letters or (have.study and want.study and have.study != want.study):
                continue
            scope = Scope(want.resource_type if want.resource_type != "*" else have.resource_type, letters,
                          want.study or have.study)
            if scope not in granted:
                granted.append(scope)
    return tuple(granted)


def scope_string(scopes: tuple[Scope, ...]) -> str:
    return " ".join(str(s) for s in scopes)
