"""Where the authorisation server lives, relative to the FHIR base URL (TRIAL_FHIR_BASE_URL, or the request's base
+ /fhir; see service/api/http.py `base_of`): beside `/fhir`, at `{origin}/auth/token` and `{origin}/auth/jwks`,
where origin is the base without its last path segment (https://x.org/fhir → https://x.org). The FHIR base is also
the issuer and the audience of the tokens it issues. Discovery and the CapabilityStatement advertise exactly these
URLs."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuthUrls:
    issuer: str  # the FHIR base: `iss` and `aud` of our access tokens
    token: str
    jwks: str


def auth_urls(fhir_base: str) -> AuthUrls:
    base = fhir_base.rstrip("/")
    origin = base.rsplit("/", 1)[0] if "/" in base.split("://", 1)[-1] else base
    return AuthUrls(base, f"{origin}/auth/token", f"{origin}/auth/jwks")
