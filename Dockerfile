# trial-fhir: FHIR R4 service for clinical trials.
#   docker build -t trial-fhir .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql+psycopg://user:pass@db:5432/trial trial-fhir
# Without DATABASE_URL it runs on an embedded SQLite file in /data (mount a volume there to keep it).
# Access control is on (TRIAL_FHIR_AUTH=smart): every FHIR request needs a SMART Backend Services token. Register
# each client (its id and public JWKS) before it connects, e.g.
#   docker run --rm -v trial-data:/data trial-fhir trial-fhir clients add …   (see `trial-fhir clients add --help`)
# TRIAL_FHIR_AUTH=off is refused on 0.0.0.0 unless TRIAL_FHIR_ALLOW_ANONYMOUS=true (a gateway does access control).
# Behind a reverse proxy set TRIAL_FHIR_BASE_URL (or TRIAL_FHIR_TRUSTED_PROXIES) so links use the public URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_URL=sqlite:////data/trial-fhir.db \
    TRIAL_FHIR_HOST=0.0.0.0 \
    TRIAL_FHIR_PORT=8000 \
    TRIAL_FHIR_AUTH=smart \
    TRIAL_FHIR_EXPORT_DIR=/data/export

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY fhir_mappings ./fhir_mappings
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin trial \
    && mkdir -p /data/export && chown -R trial /data

# the source revision /readyz and `trial-fhir --version` show (the image has no .git):
#   docker build --build-arg GIT_REVISION=$(git rev-parse HEAD) -t trial-fhir .
ARG GIT_REVISION=unknown
ENV TRIAL_FHIR_GIT_REVISION=$GIT_REVISION

USER trial
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

CMD ["python", "-m", "service"]
