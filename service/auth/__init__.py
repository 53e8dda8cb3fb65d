"""Who may do what: SMART Backend Services tokens (service/auth/token.py, the built-in authorisation server, and
service/auth/verify.py, which accepts its tokens and trusted external issuers'), the clients registered with it
(service/auth/clients.py) and the SMART scopes a token carries (service/auth/scopes.py)."""
