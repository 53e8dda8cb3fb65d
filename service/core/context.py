"""What the interaction core knows of a request: plain values, nothing of HTTP."""

from dataclasses import dataclass

from service.auth.scopes import Scope


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as their token says (service/auth/verify.py): the client, the scopes granted, the studies it
    is registered for and whether it sees de-identified data. `scopes is None` means no access control at all
    (`TRIAL_FHIR_AUTH=off`, and the core's own callers such as the CLI)."""

    name: str = "anonymous"  # the client id (the token's `sub`, or `client_id`)
    scopes: tuple[Scope, ...] | None = None
    studies: frozenset[str] | None = None  # None: every study (subject to granular scopes)
    deidentified: bool = False
    issuer: str | None = None  # who issued the token (this server's own token URL, or a trusted external issuer)
    expires_at: float | None = None  # the token's `exp` (seconds since the epoch)

    @property
    def unrestricted(self) -> bool:
        return self.scopes is None

    def may(self, resource_type: str, letter: str) -> bool:
        """Does a scope grant `letter` (one of `cruds`) on `resource_type`?"""
        return self.scopes is None or any(s.covers(resource_type, letter) for s in self.scopes)

    def studies_for(self, resource_type: str, letter: str) -> frozenset[str] | None:
        """The studies whose resources of `resource_type` this caller may `letter`; None when not limited to any.
        The client's registered studies, narrowed by granular `?study=` scopes when every scope granting the
        interaction is granular (one unrestricted scope grants it for all the client's studies)."""
        if self.scopes is None:
            return self.studies
        granting = [s for s in self.scopes if s.covers(resource_type, letter)]
        if not granting or any(s.study is None for s in granting):
            return self.studies
        scoped = frozenset(s.study for s in granting if s.study)
        return scoped if self.studies is None else scoped & self.studies


ANONYMOUS = Caller()
#: the core's own callers (CLI, demo loader, export worker acting for a job): no access control
SYSTEM = Caller(name="trial-fhir")


@dataclass(frozen=True, slots=True)
class Context:
    """The request values every interaction takes besides its own arguments."""

    base_url: str  # public base of the FHIR endpoint, e.g. https://fhir.example.org/fhir (no trailing slash)
    caller: Caller = ANONYMOUS
    strict: bool = False  # `Prefer: handling=strict`: unknown or malformed search parameters are a 400
    request_id: str | None = None  # X-Request-ID, or one made for the request (audit)
    client_address: str | None = None  # the network address of the client (audit)
    query: str | None = None  # the request's query string as sent (audit: entity.query)
    consistent: bool = False  # `Prefer: consistency=strong`: reads on the primary, never the read replica


def prefers(prefer: str | None, token: str) -> bool:
    """Does the `Prefer` header hold `token` (e.g. `handling=strict`, `return=minimal`)? Spaces and case ignored."""
    return token in (prefer or "").replace(" ", "").lower()
