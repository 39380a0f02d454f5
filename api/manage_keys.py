"""Manage API keys on the command line (the key store itself is shared/apikeys.py, which the worker reads too):

    python -m api.manage_keys create --name pipeline --scopes index,query [--collections photos,banned]
    python -m api.manage_keys list
    python -m api.manage_keys revoke <key id>
    python -m api.manage_keys webhook-secret <key id>     # a new webhook signing secret, printed once

``create`` prints the key and its webhook secret once; neither can be shown again (a lost
webhook secret is replaced with ``webhook-secret``, which also gives keys made before
per-key secrets existed one).
"""

import argparse
import json
import sys
from dataclasses import asdict

from shared.apikeys import SCOPES, KeyStore
from shared.settings import get_settings

# What `list` never prints.
HIDDEN_FIELDS = ("secret_sha256", "webhook_secret")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.manage_keys", description="Manage Lookalike API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it with its webhook secret (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    create.add_argument("--collections", help="comma-separated collections the key may use (default: all)")
    commands.add_parser("list", help="list keys (never their secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    rotate = commands.add_parser("webhook-secret", help="give a key a new webhook signing secret and print it (once)")
    rotate.add_argument("key_id")
    args = parser.parse_args(argv)

    store = KeyStore.from_settings(get_settings())
    if args.command == "create":
        # Given but blank (--collections "" or " , "): refused by the store, never "every collection".
        collections = (None if args.collections is None
                       else [name.strip() for name in args.collections.split(",") if name.strip()])
        try:
            token, record = store.create(args.name, [s.strip() for s in args.scopes.split(",")], collections)
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps({"key": token, "key_id": record.key_id, "scopes": record.scopes,
                          "collections": record.collections, "webhook_secret": record.webhook_secret}))
        return 0
    if args.command == "list":
        for record in store.list():
            print(json.dumps({k: v for k, v in asdict(record).items() if k not in HIDDEN_FIELDS}))
        return 0
    if args.command == "webhook-secret":
        secret = store.rotate_webhook_secret(args.key_id)
        if secret is None:
            print(f"no live key {args.key_id}", file=sys.stderr)
            return 1
        print(json.dumps({"key_id": args.key_id, "webhook_secret": secret}))
        return 0
    if not store.revoke(args.key_id):
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
