"""Who may do what: the built-in SMART Backend Services authorisation server and the tokens it accepts.

- service/auth/router.py: `POST /auth/token`, `GET /auth/jwks`, `GET /fhir/.well-known/smart-configuration`
  (where: service/auth/urls.py), answered by service/auth/token.py (assertion checks, access tokens);
- service/auth/verify.py: `Authenticator`, the Caller of a bearer token (own, or a trusted external issuer's);
- service/auth/clients.py and service/auth/cli.py (`trial-fhir clients …`): the registered clients;
- service/auth/keys.py: the server's signing keys; service/auth/jwks.py: JWKS key selection and fetching;
- service/auth/scopes.py: the SMART scopes a token carries; service/auth/models.py: the tables.
"""
