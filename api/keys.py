"""API keys: ``Authorization: Bearer lk_<key id>_<secret>``, stored hashed, with scopes and collections.

Only a SHA-256 of each secret is stored (secrets are 256 random bits, so a slow hash adds
nothing); the comparison is constant-time. Manage keys with the command line:

    python -m api.keys create --name pipeline --scopes index,query [--collections photos,banned]
    python -m api.keys list
    python -m api.keys revoke <key id>
"""

import argparse
import hashlib
import hmac
import json
import secrets
import sys
from dataclasses import asdict, dataclass

import redis

from shared import keys
from shared.errors import LookalikeError
from shared.settings import get_settings
from shared.store import utc_now

SCOPES = ("index", "query", "metrics", "admin")
PREFIX = "lk"


@dataclass
class ApiKey:
    key_id: str
    name: str
    scopes: list[str]
    collections: list[str] | None  # None: every collection
    secret_sha256: str
    created_at: str
    revoked_at: str | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def allows_collection(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


class KeyStore:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def create(self, name: str, scopes: list[str], collections: list[str] | None) -> tuple[str, ApiKey]:
        """A new key: returns the token (shown once) and its stored record."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}")
        key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        record = ApiKey(key_id, name, sorted(scopes), collections, _digest(secret), utc_now())
        self.redis.hset(keys.API_KEYS, key_id, json.dumps(asdict(record)))
        return f"{PREFIX}_{key_id}_{secret}", record

    def list(self) -> list[ApiKey]:
        return sorted((ApiKey(**json.loads(raw)) for raw in self.redis.hvals(keys.API_KEYS)), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        raw = self.redis.hget(keys.API_KEYS, key_id)
        if raw is None:
            return False
        record = ApiKey(**json.loads(raw))
        record.revoked_at = record.revoked_at or utc_now()
        self.redis.hset(keys.API_KEYS, key_id, json.dumps(asdict(record)))
        return True

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The live key behind an ``Authorization`` header, or 401 ``unauthorized``."""
        if not authorization or not authorization.startswith("Bearer "):
            raise LookalikeError("unauthorized", "Send an API key as 'Authorization: Bearer <key>'.")
        parts = authorization.removeprefix("Bearer ").strip().split("_", 2)
        raw = self.redis.hget(keys.API_KEYS, parts[1]) if len(parts) == 3 and parts[0] == PREFIX else None
        record = ApiKey(**json.loads(raw)) if raw else None
        secret = parts[2] if len(parts) == 3 else ""
        # Always compare, also for an unknown id, so timing does not tell which part was wrong.
        valid = hmac.compare_digest(_digest(secret), record.secret_sha256 if record else _digest(""))
        if record is None or not valid or record.revoked_at:
            raise LookalikeError("unauthorized", "The API key is unknown, wrong or revoked.")
        return record


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description="Manage Lookalike API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    create.add_argument("--collections", help="comma-separated collections the key may use (default: all)")
    commands.add_parser("list", help="list keys (never their secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    store = KeyStore(redis.Redis.from_url(get_settings().redis_url))
    if args.command == "create":
        collections = [c.strip() for c in args.collections.split(",")] if args.collections else None
        try:
            token, record = store.create(args.name, [s.strip() for s in args.scopes.split(",")], collections)
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps({"key": token, "key_id": record.key_id, "scopes": record.scopes, "collections": collections}))
        return 0
    if args.command == "list":
        for record in store.list():
            print(json.dumps({k: v for k, v in asdict(record).items() if k != "secret_sha256"}))
        return 0
    if not store.revoke(args.key_id):
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
