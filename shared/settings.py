"""All of Lookalike's settings, read once from ``LOOKALIKE_*`` environment variables.

docs/configuration.md documents each field; tests/test_compose.py checks the compose file
against the field names here.
"""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.outbound import Allowlist
from shared.search_groups import GROUP_NAME
from shared.webhooks import standard_key


class Settings(BaseSettings):
    # hide_input_in_errors: a mistyped secret must not reach a startup log inside the error that refuses it.
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore", hide_input_in_errors=True)

    # --- Redis -----------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="The store: Redis holding vectors, metadata, tasks, uploads, API keys, rate limits and "
        "idempotency records (and the broker too, unless `LOOKALIKE_BROKER_URL` names another). `make run` "
        "starts an embedded Redis when this is not set.",
    )
    redis_mode: Literal["single", "cluster", "sentinel"] = Field(
        "single", description="How the store's Redis is reached: `single` (one server at `LOOKALIKE_REDIS_URL`), "
        "`cluster` (a Redis Cluster; the URL names one or more of its nodes, comma-separated: "
        "`redis://10.0.0.1:6379,10.0.0.2:6379`), or `sentinel` (the master named by "
        "`LOOKALIKE_REDIS_SENTINEL_MASTER`, found through the Sentinels the URL lists: "
        "`redis://[:password@]10.0.0.1:26379,10.0.0.2:26379/0`, the password and database being the master's).",
    )
    redis_sentinel_master: str | None = Field(
        None, description="In `sentinel` mode, the name the Sentinels know the store's master by (required there).")
    broker_url: str | None = Field(
        None, description="Celery's broker, as kombu takes it: `redis://host:6379/0`, or "
        "`sentinel://host:26379;sentinel://host2:26379` with `LOOKALIKE_BROKER_SENTINEL_MASTER`. Unset: the store's "
        "Redis, in `single` mode; required in the others (`make run` then starts an embedded Redis for it). Its own "
        "Redis keeps queues moving while the store's forks for persistence.",
    )
    broker_sentinel_master: str | None = Field(
        None, description="The master's name the broker's Sentinels know, for a `sentinel://` broker.")
    data_dir: Path = Field(Path(".data"), description="Where the embedded Redis of `make run` keeps its files.")
    embedded_redis_port: int = Field(6380, description="Port of the embedded Redis started by `make run`.")

    # --- HTTP API ----------------------------------------------------------------------
    auth: bool = Field(True, description="Require API keys (`python -m api.manage_keys`); `false` only for local use.")
    rate_limit: str = Field("6000/minute", description="Requests allowed per API key (per client address with keys "
                            "off), in Flask-Limiter's notation, e.g. `100/second`; empty for no limit.")
    host: str = Field("127.0.0.1", description="Address the API listens on (0.0.0.0 in containers).")
    port: int = Field(8000, description="Port of the API.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted image upload.")
    max_pixels: int = Field(50_000_000, gt=0,
                            description="Largest accepted width × height, read from the image header.")
    max_metadata_bytes: int = Field(16 * 1024, gt=0, description="Largest accepted `metadata` JSON document.")
    default_k: int = Field(10, ge=1, le=1000, description="Matches returned by a query that gives no `k`.")
    max_wait_seconds: int = Field(30, ge=0, description="Largest `?wait=` accepted by GET /v1/tasks/{id}; a "
                                  "`Prefer: wait=N` on a check or query is held at most this long.")
    max_batch_files: int = Field(256, ge=1, description="Most images in one bulk upload (POST .../batches).")
    max_batch_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Largest accepted bulk upload request.")
    max_vectors_per_request: int = Field(1000, ge=1, description="Most vectors in one POST .../vectors request, "
                                         "and most hashes in one POST .../hashes.")
    max_waiting_polls: int = Field(8, ge=0, description="Most waiting requests (`GET /v1/tasks/{id}?wait=` polls "
                                   "and `Prefer: wait` checks and queries) one API process holds at once (keep it "
                                   "under gunicorn's 16 threads); one beyond it is answered at once: the task as it "
                                   "stands, or 202.")
    max_waiting_polls_per_key: int = Field(4, ge=0, description="Most waiting requests one API key (one client "
                                           "address with keys off) holds in one API process; beyond it, answered at "
                                           "once.")
    auth_failure_limit: str = Field("30/minute", description="Failed authentications allowed per client address, "
                                    "in Flask-Limiter's notation; past it, `429 rate_limited` for that address until "
                                    "the window ends. Empty: no limit.")
    trusted_proxies: int = Field(0, ge=0, description="Reverse proxies in front of the API whose `X-Forwarded-For` "
                                 "and `X-Forwarded-Proto` are believed (werkzeug's ProxyFix), so rate limits see "
                                 "client "
                                 "addresses; 0 when clients reach gunicorn directly (Compose's nginx: 1).")

    # --- Storage lifetimes ---------------------------------------------------------------------
    upload_ttl_seconds: int = Field(
        6 * 3600, gt=0, description="How long uploaded bytes wait in Redis for a worker before they expire."
    )
    task_ttl_seconds: int = Field(24 * 3600, gt=0, description="How long task records (and query results) are kept.")
    store_full_ratio: float = Field(
        0.9, gt=0, le=1, description="Above this share of Redis' maxmemory, new images are refused (store_full) "
        "while queries go on, using the rest.",
    )
    change_stream_length: int = Field(
        100_000, ge=100,
        description="Change events kept per collection for search replicas; a replica further behind reloads in full.",
    )

    # --- Logs and metrics -------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field("text", description="`json`: one JSON object per log line, with "
                                                "`request_id` and `task_id`; `text`: the same fields for people.")
    log_level: str = Field("INFO", description="Least severe log level written (DEBUG, INFO, WARNING, ERROR).")
    worker_metrics_port: int = Field(18000, ge=0, le=65535, description="Port of a worker's Prometheus `/metrics` "
                                     "(0: none). One per worker process: give each on a host its own.")
    worker_metrics_host: str = Field("127.0.0.1", description="Address a worker's Prometheus `/metrics` listens on: "
                                     "loopback unless something else must scrape it (`0.0.0.0` in Compose's network).")

    # --- Worker and model --------------------------------------------------------------------
    weights: str = Field(
        "imagenet",
        description="`imagenet` (Keras download and cache), a path to a weights file, or `random` "
        "(seeded; tests and offline smoke runs only).",
    )
    seed: int = Field(0, description="Seed of the `random` weights.")
    worker_threads: int = Field(
        32, ge=1,
        description="Tasks one worker process holds at once; at least `LOOKALIKE_MAX_BATCH` lets a full batch gather."
    )
    max_batch: int = Field(32, ge=1, le=256, description="Most images in one forward pass.")
    batch_wait_ms: float = Field(
        5.0, ge=0, description="How long a forward pass waits after its first image for more to join it."
    )
    pooling: Literal["mac", "spoc", "gem", "rmac"] = Field(
        "rmac", description="How the last conv block becomes one vector: max (MAC), average (SPoC), generalised mean "
        "(GeM, p=3) or regional max (R-MAC). Part of the descriptor: collections keep the one they were indexed with "
        "(docs/quality.md).")
    input_mode: Literal["squash", "pad"] = Field(
        "pad", description="`squash` images to 224x224, or `pad`: keep the aspect ratio within 224x224 and pool "
        "only what the image covers. Part of the descriptor, like `LOOKALIKE_POOLING`.")
    scales: Annotated[tuple[int, ...], NoDecode] = Field(
        (224,), description="Longest side of the image in each forward pass, comma-separated (32-224), e.g. "
        "`224,160` for two scales whose descriptors are summed: a pass each. Part of the descriptor, like "
        "`LOOKALIKE_POOLING`.")
    decode_pixel_budget: int = Field(
        64_000_000, ge=1_000_000, description="Pixels a worker process may be decoding at once (about 3 bytes each, "
        "and up to twice that while a PNG decodes); further images wait their turn. Decoded images are kept at "
        "512 px a side at most, and JPEGs decode already scaled down, so this binds only on huge non-JPEG images.")
    mixed_precision: bool = Field(
        False, description="float16 compute (float32 weights and vectors); for GPUs with tensor cores."
    )
    hash_processes: int = Field(
        0, ge=0, le=64, description="Processes that compute PDQ hashes for a worker that holds the model (0: its "
        "task threads do). PDQ holds Python's interpreter lock (about half of what a worker process holds it "
        "for), which bounds what one worker process can feed a GPU: on a host with spare cores, give it 2-4.")
    warm_up: bool | None = Field(
        None, description="Before taking tasks, run one forward pass of each batch size the batcher uses, so no "
        "task waits while a shape compiles (JAX and PyTorch compile each on first use; on a GPU, TensorFlow picks "
        "its kernels). Unset: on where the Keras backend sees a GPU.")
    search_groups: Annotated[tuple[str, ...], NoDecode] = Field(
        ("main",), description="The search groups, comma-separated: each has its own queue (`search.<group>`) and "
        "the search workers started with `--groups` naming it (`python -m worker --role search --groups a,b`) hold "
        "replicas of its collections only. A collection belongs to the group its `group` setting names, else to "
        "one chosen by a stable hash of its name. Every API and worker process must list the same groups.")
    heartbeat_seconds: int = Field(10, ge=1, description="How often a worker process announces itself (for /readyz) "
                                   "and renews the leases of its running tasks; one silent for 3 heartbeats is dead, "
                                   "and its tasks are given to other workers.")
    task_events: bool = Field(
        True, description="Celery's task events (sent, received, started, succeeded: four pub/sub messages per "
        "task), which Flower's task views show. Off where nothing watches them and every broker message counts "
        "(a worker feeding a GPU): Flower then shows workers and queues, not tasks.")
    visibility_timeout_seconds: int = Field(
        300, ge=1, description="A task taken by a worker that has not acknowledged it this long after is delivered "
        "again, whatever became of that worker; must exceed the longest a task waits in a worker. Tasks of a "
        "worker whose heartbeat stopped come back sooner: within about 4 heartbeats.",
    )
    redis_outage_seconds: float = Field(
        120, gt=0, description="How long a running task waits for Redis to come back (a restart, a failover) "
        "before it gives its message back to the queue; then it is done again from the start.",
    )

    # --- Search ----------------------------------------------------------------------------
    load_wait_seconds: float = Field(30, gt=0, description="How long a query or check waits for its worker to load "
                                     "a collection it does not hold yet (loads run in the background); past it the "
                                     "task "
                                     "fails with `collection_loading`, to submit again. Keep it well under "
                                     "`LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS`.")
    staleness_seconds: float = Field(1.0, ge=0, description="How stale a query or check of a collection of several "
                                     "buckets may find them: search processes tail the buckets' change streams in "
                                     "the background, and a query reads a bucket's stream itself only when its last "
                                     "refresh is older (or its `write_token` asks for a change it lacks). 0: every "
                                     "query reads every stream. Collections of one bucket always see every write "
                                     "done before the query.")
    gather_timeout_seconds: float = Field(60, gt=0, description="How long a query or check whose collection's "
                                          "buckets several search groups hold waits for every group's answer; past "
                                          "it the task fails with `search_unavailable`. Keep it above "
                                          "`LOOKALIKE_LOAD_WAIT_SECONDS`.")
    exact_max: int = Field(200_000, ge=0, description="Collections up to this many vectors are searched exactly; "
                           "larger ones through an HNSW index.")
    hnsw_m: int = Field(16, ge=2, description="HNSW graph degree (hnswlib's M): higher is more accurate and larger.")
    hnsw_ef_construction: int = Field(100, ge=10,
                                      description="HNSW build-time candidate list (hnswlib's ef_construction).")
    hnsw_ef_search: int = Field(512, ge=1,
                                description="HNSW query-time candidate list (hnswlib's ef; at least k is used).")
    snapshot_dir: Path | None = Field(None, description="Where query workers save HNSW replicas, so a restarted "
                                      "worker catches up instead of rebuilding; default "
                                      "`LOOKALIKE_DATA_DIR`/snapshots.")
    snapshot_every_changes: int = Field(10_000, ge=1,
                                        description="Changes applied to an HNSW replica between snapshots.")
    whitening_min_images: int = Field(100, ge=2, description="A collection with `whitening` on learns it once it "
                                      "holds this many images; until then it is searched unwhitened.")
    whitening_relearn_growth: float = Field(2.0, gt=1, description="Whitening is learned again when the collection "
                                            "has grown this many times over the images it was learned from.")
    whitening_sample_images: int = Field(50_000, ge=2, description="Most vectors (a random sample) whitening is "
                                         "learned from.")

    # --- Moderation ------------------------------------------------------------------------
    pdq_min_quality: int = Field(50, ge=0, le=100, description="PDQ hashes of lower quality (flat, featureless "
                                 "images) are stored but never matched, on either side of a comparison.")
    thumbnail_size: int = Field(96, ge=0, le=512, description="Longest side of the JPEG thumbnail kept per image "
                                "for the web page and `GET .../thumbnails/{id}` (about 2.3 KB in Redis at 96); 0: "
                                "none.")
    idempotency_ttl_seconds: int = Field(24 * 3600, gt=0, description="How long a POST's response is kept for "
                                         "replay under its `Idempotency-Key` header.")

    # --- Images by URL ------------------------------------------------------------------------
    fetch_allowlist: str = Field("", description="Hosts images may be fetched from (`url` instead of a file): "
                                 "comma-separated names, `*.` wildcards, addresses or networks, each with an optional "
                                 "port, e.g. `images.example.com,*.cdn.example.com,media.local:8080,10.20.0.0/16`; "
                                 "without a port only 80 (http) and 443 (https). Every address a name resolves to "
                                 "must be public unless listed as an address or network. Empty: fetching is off.")
    fetch_timeout_seconds: float = Field(10.0, gt=0, description="Longest a worker spends fetching one image, the "
                                         "whole exchange: lookup, connect, TLS, headers, body and every redirect.")
    fetch_max_redirects: int = Field(3, ge=0, le=10, description="Redirects followed when fetching an image; "
                                     "each target must pass the allow list too.")

    # --- Webhooks ---------------------------------------------------------------------------
    callback_allowlist: str = Field("", description="Hosts `callback_url` may point at, in the notation "
                                    "(and with the address rule) of `LOOKALIKE_FETCH_ALLOWLIST`; empty: callbacks are "
                                    "refused.")
    webhook_secret: SecretStr | None = Field(None, description="Key of the HMAC-SHA256 `X-Lookalike-Signature` "
                                             "on webhooks of tasks submitted without an API key "
                                             "(`LOOKALIKE_AUTH=false`); "
                                             "their callbacks are refused while it is unset. With keys, each key signs "
                                             "with its own secret (`python -m api.manage_keys`).")
    webhook_signing_secret: SecretStr | None = Field(None, description="Standard Webhooks secret (`whsec_` and the "
                                                     "standard base64 of 24 to 64 random bytes) of the `webhook-id`, "
                                                     "`webhook-timestamp` and `webhook-signature` headers sent beside "
                                                     "`X-Lookalike-Signature` on webhooks of tasks submitted without "
                                                     "an "
                                                     "API key; unset: those headers are not sent (a key's tasks carry "
                                                     "them signed with the key's own secret). Refused at start when "
                                                     "malformed.")
    webhook_max_attempts: int = Field(6, ge=1, le=20, description="Deliveries tried per webhook before it is "
                                      "given up (the attempts show on the task).")
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="Wait before the second attempt; doubled "
                                           "before each further one, up to `LOOKALIKE_WEBHOOK_MAX_BACKOFF_SECONDS`.")
    webhook_max_backoff_seconds: float = Field(60.0, gt=0, description="Longest wait between two attempts; keep "
                                               "it under `LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS`.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Longest one delivery takes, the whole exchange: "
                                           "lookup, connect, TLS, sending and the receiver's answer.")

    @field_validator("search_groups", mode="before")
    @classmethod
    def _comma_separated_groups(cls, value):
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("search_groups")
    @classmethod
    def _group_names(cls, value):
        if not value or len(set(value)) != len(value) or not all(GROUP_NAME.fullmatch(name) for name in value):
            raise ValueError("give one or more different group names of 1-32 characters of a-z, 0-9, '_' and '-'")
        return value

    @field_validator("scales", mode="before")
    @classmethod
    def _comma_separated_scales(cls, value):
        if isinstance(value, str):
            value = tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("scales")
    @classmethod
    def _scales_fit_the_input(cls, value):
        if not value or any(not 32 <= scale <= 224 for scale in value) or len(set(value)) != len(value):
            raise ValueError("give one or more different sizes from 32 to 224, e.g. 224,160")
        return value

    @field_validator("fetch_allowlist", "callback_allowlist")
    @classmethod
    def _allowlist_parses(cls, value):
        # Refused at start, naming the entry, rather than failing each request or task that reads it.
        Allowlist(value)
        return value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value):
        # Compose passes an unset variable as "": that must mean "no secret", never an empty key.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_signing_secret", mode="before")
    @classmethod
    def _standard_webhooks_secret(cls, value):
        # Blank (as Compose passes an unset variable) is no secret; anything else must be one a receiver's
        # Standard Webhooks library reads the same key from. Our message names the fault, not the secret
        # (pydantic's error text still quotes the input: the model does not set hide_input_in_errors).
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value
        if not text.strip():
            return None
        try:
            standard_key(text.strip())
        except ValueError as error:
            raise ValueError(f"LOOKALIKE_WEBHOOK_SIGNING_SECRET is not a Standard Webhooks secret: {error}. Give "
                             "'whsec_' and the standard base64 of 24 to 64 random bytes, e.g. from python -c \"import "
                             "base64, secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\", "
                             "or leave it unset") from None
        return text.strip()

    @model_validator(mode="after")
    def _sentinel_mode_names_its_master(self):
        if self.redis_mode == "sentinel" and not self.redis_sentinel_master:
            raise ValueError("LOOKALIKE_REDIS_MODE=sentinel needs LOOKALIKE_REDIS_SENTINEL_MASTER, the master's name")
        return self

    @model_validator(mode="after")
    def _outage_wait_within_visibility(self):
        # A task still waiting for Redis when its message becomes visible again would run twice.
        if max(self.redis_outage_seconds, self.load_wait_seconds) >= self.visibility_timeout_seconds:
            raise ValueError("LOOKALIKE_REDIS_OUTAGE_SECONDS and LOOKALIKE_LOAD_WAIT_SECONDS must be shorter than "
                             "LOOKALIKE_VISIBILITY_TIMEOUT_SECONDS")
        # A group still waiting for a bucket's load when its gather is given up on answers in vain.
        if self.gather_timeout_seconds <= self.load_wait_seconds:
            raise ValueError("LOOKALIKE_GATHER_TIMEOUT_SECONDS must be longer than LOOKALIKE_LOAD_WAIT_SECONDS")
        return self

    @property
    def broker(self) -> str:
        """Celery's broker URL: its own, or the store's (in single mode only: Celery cannot use a Redis Cluster,
        and a store behind Sentinel is named by its Sentinels, which kombu's URL names otherwise)."""
        if self.broker_url:
            return self.broker_url
        if self.redis_mode != "single":
            raise ValueError(f"LOOKALIKE_REDIS_MODE={self.redis_mode} needs LOOKALIKE_BROKER_URL: Celery's broker "
                             "is its own Redis then (redis://... or sentinel://...)")
        return self.redis_url

    @property
    def snapshot_path(self) -> Path:
        return self.snapshot_dir or self.data_dir / "snapshots"


def as_environment_value(value) -> str:
    """A setting's value as it is written in its environment variable (lists comma-separated)."""
    return ",".join(str(part) for part in value) if isinstance(value, tuple) else str(value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
