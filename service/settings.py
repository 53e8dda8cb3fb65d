"""Settings, read from the environment (`TRIAL_FHIR_*`, plus `DATABASE_URL`)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIAL_FHIR_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///./trial-fhir.db",
        validation_alias=AliasChoices("DATABASE_URL", "TRIAL_FHIR_DATABASE_URL"),
        description="SQLAlchemy URL: SQLite (default, embedded) or postgresql+psycopg://…",
    )
    read_database_url: str | None = Field(
        None, description="PostgreSQL streaming replica of the database (postgresql+psycopg://…) that serves reads, "
        "searches, history, $everything, exports and the study's figures while it is fresh enough (see Read "
        "replicas); writes, conditional operations, transaction/batch Bundles and anything that must read its own "
        "writes use TRIAL_FHIR_DATABASE_URL. PostgreSQL only (refused at start-up with SQLite). Unset: no replica.")
    read_max_lag_s: float = Field(
        5.0, gt=0, description="Most a replica may lag behind the primary (seconds, measured by WAL position about "
        "once a second) and still serve reads; beyond it, or while it does not answer, reads go to the primary.")
    host: str = Field("127.0.0.1", description="Interface `python -m service` binds to.")
    port: int = Field(8000, description="Port `python -m service` listens on.")
    base_url: str | None = Field(
        None, description="Public base URL of the FHIR endpoint (e.g. https://fhir.example.org/fhir); "
        "by default it is taken from each request."
    )
    auth: Literal["off", "smart"] = Field(
        "smart", description="`smart`: every request but the public documents (metadata, well-known, health, docs) "
        "needs a SMART Backend Services access token; `off`: no access control (development; `serve` then refuses "
        "a non-loopback address unless TRIAL_FHIR_ALLOW_ANONYMOUS=true).")
    allow_anonymous: bool = Field(
        False, description="Let `serve` bind a non-loopback address with TRIAL_FHIR_AUTH=off.")
    token_lifetime_s: int = Field(300, ge=30, le=300, description="Lifetime of the access tokens this server issues.")
    auth_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew allowed when checking exp/nbf/iat.")
    trusted_issuers: list[dict[str, str]] = Field(
        default_factory=list, description='External token issuers accepted besides this server, as JSON: '
        '[{"issuer": "https://idp.example.org/realms/x", "jwks_url": "https://…/certs", "audience": "trial-fhir"}]')
    deid_secret: str | None = Field(
        None, description="Secret keying de-identified views (pseudonymous ids, date shifts); by default one is "
        "generated and kept in the database.")
    deid_shift_dates: bool = Field(
        True, description="Shift dates by a per-patient offset in de-identified views; false keeps them exact (when "
        "an expert determination allows it).")
    deid_min_cell: int = Field(5, ge=1, description="Aggregates over fewer subjects than this are suppressed for "
                               "de-identified clients (k-anonymity).")
    cors_origins: list[str] = Field(default_factory=list, description='Origins allowed by CORS, as JSON ["https://…"].')
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Addresses of reverse proxies whose X-Forwarded-For/-Proto/-Host are "
        "believed (as JSON); from anyone else those headers are ignored.")
    migrate_on_startup: bool = Field(True, description="Bring the schema up to date when the app starts.")
    load_demo_on_startup: bool = Field(
        False, description="Load the synthetic demo trial at start-up when the database holds no study."
    )
    load_catalogue_on_startup: bool = Field(
        True, description="Store the shipped atopic dermatitis catalogue (PlanDefinition `atopic-dermatitis` and "
        "its ObservationDefinitions) at start-up when the database does not hold it yet."
    )
    enforce_trial_rules: bool = Field(
        True, description="Reject (422) resources that break the trial's rules; when off, violations are logged."
    )
    out_of_scope: Literal["reject", "skip"] = Field(
        "reject", description="What a transaction or batch entry the trial does not keep gets (a resource type this "
        "server does not store, an Observation whose code is outside its study's catalogue, a resource about a patient "
        "enrolled in no study): `reject` (400/422) or `skip` (200 with a warning, nothing stored). A study may set "
        "its own (ResearchStudy extension https://trial-fhir.org/StructureDefinition/out-of-scope-policy).")
    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest accepted request body (413 above).")
    max_bundle_entries: int = Field(10_000, description="Largest transaction/batch Bundle accepted (413 above).")
    default_page_size: int = Field(50, description="Default `_count` of a search.")
    max_page_size: int = Field(1000, description="Largest `_count` of a search.")
    max_param_repeats: int = Field(
        100, ge=1, description="Most times one query parameter may be repeated in a FHIR request (400 naming it "
        "above).")
    max_or_values: int = Field(
        500, ge=1, description="Most comma-separated (OR) values in one query parameter of a FHIR request (400 naming "
        "it above; SQLite limits the variables of a statement).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must send a request's complete headers within this many seconds of "
        "opening (or of the request's first byte on a kept-alive connection), else it is closed (slow clients, "
        "slowloris). Needs `trial-fhir serve` or uvicorn `--http service.api.read_timeouts:TimedHttpToolsProtocol`.")
    body_timeout_s: float = Field(
        60.0, gt=0, description="A request's whole body must arrive within this many seconds of its headers, else "
        "the answer is 408 (nothing applied) and the connection is closed. In the app: any server.")
    max_header_bytes: int = Field(
        65_536, ge=1024, description="Largest request line plus headers (bytes); above: 431 and the connection "
        "closed. Needs `serve` or the `--http` protocol, as the header timeout does.")
    max_header_count: int = Field(
        100, ge=10, description="Most request headers; above: 431 and the connection closed (as above).")
    search_threads: int = Field(
        4, ge=1, description="Worker threads per process that run searches; more searches than this wait their turn "
        "(a few threads share the GIL better than many: p99 at 16 clients fell from ~100 to ~17 ms with 4).")
    write_groups: int = Field(
        2, ge=0, description="Single creates (`POST /fhir/{type}`) in flight per process: the creates that arrive "
        "while this many are running wait, and are then committed together in one transaction (each with its own "
        "answer, AuditEvent and error). 0: every create has its own transaction at once.")
    write_group_size: int = Field(
        32, ge=2, description="Most creates committed together in one transaction (`write_groups`).")
    front_door: bool = Field(
        True, description="Answer `GET` and `POST /fhir/{type}` (search, create) in front of FastAPI's layers, which "
        "cost as much CPU as a search; off, the documented routes answer them (the same interactions and answers).")
    async_search: bool = Field(
        True, description="On PostgreSQL, read searches that are one page statement on the event loop (async "
        "connections) instead of in a search thread.")
    async_search_connections: int = Field(
        8, ge=1, description="Async PostgreSQL connections per process for those searches (more wait their turn).")
    export_dir: Path = Field(Path("./export"), description="Shared folder where bulk export files are written.")
    export_worker: bool = Field(
        True, description="Run a background-job worker thread in this process (claims queued jobs, $export ones today, "
        "from the database); turn off on API-only replicas.")
    export_poll_interval_s: float = Field(
        2.0, gt=0, description="How often an idle job worker looks for queued jobs (and reaps expired leases).")
    job_lease_s: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("TRIAL_FHIR_JOB_LEASE_S", "TRIAL_FHIR_EXPORT_STALE_AFTER_S",
                                                  "job_lease_s"),
        description="How long a background job (an export) stays its worker's without a heartbeat: once it runs "
        "out (the worker was killed, hung or lost the database), any worker puts the job back in the queue and "
        "runs it again. (TRIAL_FHIR_EXPORT_STALE_AFTER_S, its former name, is read too.)")
    job_heartbeat_s: float = Field(
        2.0, gt=0, description="How often a running job renews its lease (and reports its progress); keep it well "
        "under TRIAL_FHIR_JOB_LEASE_S.")
    job_max_attempts: int = Field(
        3, ge=1, description="Runs a background job gets: one whose worker died this many times, or that a database "
        "fault stopped this many times, fails (its status says why).")
    job_retention_hours: float = Field(
        168.0, gt=0, description="Ended background jobs are removed from the job table after this (an export's own "
        "files and status follow TRIAL_FHIR_EXPORT_RETENTION_HOURS).")
    subscription_sender: bool = Field(
        True, description="Run the subscription notification sender in this process (an asyncio task; replicas "
        "share the work through leases in the database); turn off on API-only replicas.")
    subscription_poll_s: float = Field(
        1.0, gt=0, description="How often an idle sender looks for due notifications written by other processes "
        "(events written in its own process wake it at once).")
    subscription_cache_s: float = Field(
        1.0, ge=0, description="How often each process's refresher thread reads the database's subscription "
        "generation (off the write path): a Subscription written on another replica gets events from this replica's "
        "writes within about this time (on its own replica at once).")
    subscription_timeout_s: float = Field(
        10.0, gt=0, description="Time-out of one notification POST (a Subscription's backport-timeout may ask for "
        "up to twice this).")
    subscription_lease_s: float = Field(
        60.0, gt=0, description="How long a sender holds a subscription it claimed: if its process dies "
        "mid-delivery, another sender takes the subscription over after this and sends the unacknowledged events "
        "again (at most once more, with the same event numbers). Keep it above twice "
        "TRIAL_FHIR_SUBSCRIPTION_TIMEOUT_S.")
    subscription_max_failures: int = Field(
        10, ge=1, description="Failed deliveries in a row after which a Subscription goes to `error` (with the "
        "back-off below: about 20 minutes of retries); re-enabled, it resumes at its first undelivered event.")
    subscription_backoff_s: float = Field(
        1.0, gt=0, description="First retry delay after a failed delivery; doubled at each failure, with jitter.")
    subscription_backoff_max_s: float = Field(
        300.0, gt=0, description="Longest retry delay (also the most an endpoint's Retry-After is honoured).")
    subscription_max_count: int = Field(
        100, ge=1, description="Most events in one notification (a Subscription's backport-max-count may ask for "
        "fewer).")
    subscription_concurrency: int = Field(
        64, ge=1, description="Subscriptions one sender delivers at once.")
    subscription_window_check_s: float = Field(
        300.0, gt=0, description="How often a sender checks for visit windows that closed with no result (the "
        "visit-window topic).")
    subscription_allow_http_loopback: bool = Field(
        False, description="Accept http:// endpoints on loopback (development and tests); otherwise https only.")
    export_retention_hours: float = Field(24.0, description="Finished exports (files and job) are removed after this.")
    export_batch_rows: int = Field(2000, description="Rows an export fetches per round trip (server-side cursor).")
    retry_after_s: int = Field(
        5, ge=1, description="`Retry-After` (seconds) of a 503 answered while the database is down, restarting, "
        "read-only, out of connections or too slow, and of an unready `/readyz`.")
    statement_timeout_ms: int = Field(
        30_000, ge=0, description="PostgreSQL: longest a request's database statement may run (`statement_timeout` "
        "of every connection; 0: no limit); one that runs longer is stopped and the request answered 503. Not "
        "applied to migrations and bulk exports. SQLite: no limit.")
    startup_wait_s: float = Field(
        60.0, ge=0, description="At start-up, how long a process waits for a database that is down or restarting "
        "(tried again every second) before it gives up; a worker started while PostgreSQL restarts then joins late "
        "instead of failing, which would stop uvicorn's supervisor and every worker with it.")
    ready_timeout_s: float = Field(
        2.0, gt=0, description="`/readyz` answers 503 when the database does not answer `SELECT 1` within this.")
    sql_echo: bool = Field(False, description="Log every SQL statement (debugging).")
    sync_interval_s: float = Field(
        0.0, ge=0, description="Pull every registered EHR source (`trial-fhir sources add`) this often, as a "
        "background job (one sync of a source at a time across replicas); 0: only on demand (`trial-fhir sync run`).")
    ehr_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of each request to an upstream EHR (connect, read, write, pool).")
    ehr_retry_attempts: int = Field(
        5, ge=1, description="Attempts of an idempotent request to an upstream EHR answered 429, 5xx or not at all "
        "(exponential backoff with jitter; a Retry-After sets the wait).")
    ehr_wait_cap_s: float = Field(
        120.0, gt=0, description="Longest single wait before asking an upstream EHR again (a Retry-After of hours is "
        "cut to this), and the longest pause between two polls of a Bulk Data export's status.")
    ehr_export_max_s: float = Field(
        3600.0, gt=0, description="Longest an upstream Bulk Data export may take to complete before the sync gives up "
        "(the next sync asks again with the same `_since`).")
    ehr_page_size: int = Field(
        100, ge=1, le=1000, description="`_count` of the searches a sync sends upstream (and resources per batch).")
    hl7_authorities: dict[str, str] = Field(
        default_factory=dict, description='HL7 v2: the identifier system of each PID-3 assigning authority (CX-4), as '
        'JSON {"SNUH": "urn:oid:1.2.410.200001.9"}: a result\'s patient is the Patient with that identifier.')
    hl7_timezone: str | None = Field(
        None, description="HL7 v2: the IANA time zone (e.g. Asia/Seoul) of a date/time that has neither its own "
        "offset nor MSH-7's; unset: such a result is refused (AE).")
    hl7_max_message_bytes: int = Field(
        1024 * 1024, ge=1024, description="HL7 v2: largest message accepted (POST /hl7/v2: 413 above; MLLP: the frame "
        "size cap, AR above and the connection closed).")
    mllp_port: int | None = Field(
        None, description="Run the HL7 v2 MLLP listener on this port beside the HTTP service (in its lifespan); "
        "unset: none (`trial-fhir mllp` runs one as its own process).")
    mllp_host: str = Field("127.0.0.1", description="Interface the MLLP listener binds to (it has no TLS nor "
                           "tokens: keep it on loopback or a private network behind the interface engine).")
    mllp_client: str | None = Field(
        None, description="The registered client (`trial-fhir clients add`) whose scopes and studies the MLLP listener "
        "acts with; required with TRIAL_FHIR_AUTH=smart (with auth off it acts unrestricted).")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: every log line one JSON object (timestamp, level, logger, event and the line's "
        "fields; see Observability); `text`: plain lines for a terminal.")
    request_log: bool = Field(
        True, description="Write one log line per answered request (request id, method, route template, status, "
        "latency, client id, for a 4xx the first issue's code and element).")
    metrics: bool = Field(True, description="Count requests, latencies and writes, and serve them at /metrics.")
    metrics_token: str | None = Field(
        None, description="With TRIAL_FHIR_AUTH=smart, /metrics answers loopback peers, and others sending "
        "`Authorization: Bearer <this>` (a Prometheus scrape config's `authorization.credentials`); unset: loopback "
        "only. With TRIAL_FHIR_AUTH=off anyone may read it.")
    metrics_dir: Path | None = Field(
        None, description="Folder for prometheus-client's multiprocess mode (`serve --workers N` with N > 1): each "
        "worker's values, summed at /metrics. Unset: `serve` makes a temporary one. Emptied at start.")
    gzip: bool = Field(True, description="Compress answers with gzip when the client accepts it and the body is at "
                       "least TRIAL_FHIR_GZIP_MIN_BYTES.")
    gzip_min_bytes: int = Field(
        32_768, ge=0, description="Smallest body compressed (bytes). Below it compression costs more CPU than the "
        "bytes it saves are worth on a hospital network (see bench/README.md).")
    gzip_level: int = Field(1, ge=1, le=9, description="zlib level: 1 compresses a searchset ~6x at a third of "
                            "the CPU of level 6, which compresses it ~7x.")
    git_revision: str | None = Field(
        None, description="The source's git revision, shown by /readyz and `--version` (images built without .git "
        "set it); unset: `git rev-parse` of the source folder, if any.")

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> "Settings":
        if self.job_heartbeat_s >= self.job_lease_s:
            raise ValueError(f"TRIAL_FHIR_JOB_HEARTBEAT_S ({self.job_heartbeat_s}) must be shorter than "
                             f"TRIAL_FHIR_JOB_LEASE_S ({self.job_lease_s}): a job's lease would run out between two "
                             "heartbeats and it would be run again while it runs")
        if self.subscription_lease_s <= 2 * self.subscription_timeout_s:
            raise ValueError(f"TRIAL_FHIR_SUBSCRIPTION_LEASE_S ({self.subscription_lease_s}) must be longer than twice "
                             f"TRIAL_FHIR_SUBSCRIPTION_TIMEOUT_S ({self.subscription_timeout_s}): a subscription "
                             "would be taken over while its notification is still being sent")
        return self

    def check(self) -> None:
        """Refuse, at start-up, what the fields cannot say alone (a plain ValueError naming the setting, never its
        value: a URL may hold a password). A read replica is a PostgreSQL streaming replica of a PostgreSQL
        primary: anything else would fail later, or read another database."""
        if self.read_database_url is not None:
            for name, url in (("TRIAL_FHIR_READ_DATABASE_URL", self.read_database_url),
                              ("TRIAL_FHIR_DATABASE_URL", self.database_url)):
                if not url.startswith("postgresql"):
                    raise ValueError(f"TRIAL_FHIR_READ_DATABASE_URL (a read replica) needs PostgreSQL for both "
                                     f"databases; {name} is not a postgresql:// URL")


@lru_cache
def get_settings() -> Settings:
    return Settings()
