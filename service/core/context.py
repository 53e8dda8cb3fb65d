"""What the interaction core knows of a request: plain values, nothing of HTTP."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking. Everyone is anonymous until authentication lands; identity, scopes and the studies a
    caller may see will be carried here, so that the core decides access in one place."""

    name: str = "anonymous"


ANONYMOUS = Caller()


@dataclass(frozen=True, slots=True)
class Context:
    """The request values every interaction takes besides its own arguments."""

    base_url: str  # public base of the FHIR endpoint, e.g. https://fhir.example.org/fhir (no trailing slash)
    caller: Caller = ANONYMOUS
    strict: bool = False  # `Prefer: handling=strict`: unknown or malformed search parameters are a 400


def prefers(prefer: str | None, token: str) -> bool:
    """Does the `Prefer` header hold `token` (e.g. `handling=strict`, `return=minimal`)? Spaces and case ignored."""
    return token in (prefer or "").replace(" ", "").lower()
