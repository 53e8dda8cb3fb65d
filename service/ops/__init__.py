"""Operations: what the people who run the service see of it. One JSON log line per request and structured logs
(logs.py), Prometheus metrics (metrics.py), both taken by one ASGI layer around every request (layer.py), and the
liveness, readiness, metrics and version endpoints (router.py, version.py)."""
