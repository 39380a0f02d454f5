"""API keys: ``Authorization: Bearer lk_<key id>_<secret>``, stored hashed, with scopes, collections and a
webhook signing secret of their own.

Here, not in api/, because the worker reads a key too: it signs the webhooks of a task with
the secret of the key that submitted it (worker/webhooks.py), and the worker never imports
api/. ``python -m api.manage_keys`` manages keys on the command line.

Only a SHA-256 of each API secret is stored (secrets are 256 random bits, so a slow hash
adds nothing); the comparison is constant-time. A key's webhook secret is stored as it is:
the worker needs it to sign, and a receiver holds the same value to verify. Whoever can
read Redis can read it (and everything else the service holds).
"""

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, fields

import redis

from shared import keys
from shared.errors import LookalikeError
from shared.inputs import COLLECTION_NAME
from shared.redis_client import redis_client
from shared.store import utc_now

# index: add, bulk-add, store vectors, delete; query: queries and checks; read: stored content
# (collections, image ids and records, thumbnails); metrics: /metrics; admin: everything.
SCOPES = ("index", "query", "read", "metrics", "admin")
PREFIX = "lk"
WEBHOOK_SECRET_PREFIX = "whsec_"


@dataclass
class ApiKey:
    key_id: str
    name: str
    scopes: list[str]
    collections: list[str] | None  # None: every collection
    secret_sha256: str
    created_at: str
    revoked_at: str | None = None
    # Signs the webhooks of this key's tasks. None: a key made before keys had their own
    # (its callbacks are refused until `python -m api.manage_keys webhook-secret <key id>`).
    webhook_secret: str | None = None

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ApiKey":
        known = {field.name for field in fields(cls)}
        return cls(**{name: value for name, value in json.loads(raw).items() if name in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def allows_collection(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


def validate_scopes(scopes: list[str]) -> list[str]:
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
    return sorted(set(scopes))


def validate_key_collections(collections: list[str] | None) -> list[str] | None:
    """None (every collection) or a non-empty list of valid collection names; an empty list is refused,
    so that a blank ``--collections`` can never make a key for every collection."""
    if collections is None:
        return None
    if not collections:
        raise ValueError("--collections needs at least one collection name (leave it out for every collection)")
    bad = [name for name in collections if not COLLECTION_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"not collection names: {', '.join(repr(name) for name in bad)} (1-64 characters of a-z, "
                         "0-9, '_' and '-', starting with a letter or digit)")
    return sorted(set(collections))


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, client: redis.Redis):
        """``client``: the store's (shared.redis_client), a ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
        self.redis = client

    @classmethod
    def from_settings(cls, settings) -> "KeyStore":
        return cls(redis_client(settings))

    def create(self, name: str, scopes: list[str], collections: list[str] | None) -> tuple[str, ApiKey]:
        """A new key: returns the token (shown once) and its stored record, with its webhook secret."""
        scopes = validate_scopes(scopes)
        collections = validate_key_collections(collections)
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        record = ApiKey(key_id, name, scopes, collections, _digest(secret), utc_now(),
                        webhook_secret=new_webhook_secret())
        if not self.redis.hsetnx(keys.API_KEYS, key_id, record.to_json()):
            return self.create(name, scopes, collections)  # 32-bit id taken: draw another
        return f"{PREFIX}_{key_id}_{secret}", record

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hget(keys.API_KEYS, key_id)
        return None if raw is None else ApiKey.from_json(raw)

    def list(self) -> list[ApiKey]:
        return sorted((ApiKey.from_json(raw) for raw in self.redis.hvals(keys.API_KEYS)), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        def revoked(record: ApiKey) -> ApiKey:
            record.revoked_at = record.revoked_at or utc_now()
            return record

        return self._update(key_id, revoked) is not None

    def rotate_webhook_secret(self, key_id: str) -> str | None:
        """Give the key a new webhook secret and return it; None when there is no such key or it is revoked."""
        secret = new_webhook_secret()

        def rotated(record: ApiKey) -> ApiKey | None:
            if record.revoked_at:
                return None
            record.webhook_secret = secret
            return record

        return secret if self._update(key_id, rotated) is not None else None

    def webhook_secret(self, key_id: str) -> str | None:
        """What the worker signs a task's webhooks with: the secret of the key that submitted the task."""
        record = self.get(key_id)
        return None if record is None else record.webhook_secret

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The live key behind an ``Authorization`` header, or 401 ``unauthorized``."""
        if not authorization or not authorization.startswith("Bearer "):
            raise LookalikeError("unauthorized", "Send an API key as 'Authorization: Bearer <key>'.")
        parts = authorization.removeprefix("Bearer ").strip().split("_", 2)
        raw = self.redis.hget(keys.API_KEYS, parts[1]) if len(parts) == 3 and parts[0] == PREFIX else None
        record = ApiKey.from_json(raw) if raw else None
        secret = parts[2] if len(parts) == 3 else ""
        # Always compare, also for an unknown id, so timing does not tell which part was wrong.
        valid = hmac.compare_digest(_digest(secret), record.secret_sha256 if record else _digest(""))
        if record is None or not valid or record.revoked_at:
            raise LookalikeError("unauthorized", "The API key is unknown, wrong or revoked.")
        return record

    def _update(self, key_id: str, change) -> ApiKey | None:
        """Read, change and write one key record atomically (WATCH), so that a revocation and a rotation at
        the same moment cannot undo each other. ``change`` returns the new record, or None to write nothing."""
        with self.redis.pipeline(transaction=True) as pipe:  # (a cluster's pipeline is no transaction by default)
            while True:
                try:
                    pipe.watch(keys.API_KEYS)
                    raw = pipe.hget(keys.API_KEYS, key_id)
                    record = None if raw is None else change(ApiKey.from_json(raw))
                    if record is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(keys.API_KEYS, key_id, record.to_json())
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
