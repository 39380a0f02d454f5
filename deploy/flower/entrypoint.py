"""Flower's entrypoint in docker-compose.yml: Flower never runs without a password.

Flower shows every task's arguments, and without authentication it also answers any web page's
cross-origin requests (Access-Control-Allow-Origin: *): loopback alone would not keep a page in the
operator's browser out. So FLOWER_BASIC_AUTH (compose sets it from LOOKALIKE_FLOWER_BASIC_AUTH) is
checked here before Flower starts:

- set: each comma-separated `user:password` must have both parts. Flower compares what a client sends
  with each entry as it is, so an empty entry (a trailing comma, say) would let `Authorization: Basic ==`
  in, which decodes to an empty string. Anything malformed stops the container with a message.
- unset or empty: a random password for user `lookalike`, printed once to the container's log
  (`docker compose logs flower`), new at each start.

Then it execs the command (Flower's `celery ... flower`).
"""

import os
import secrets
import sys


def credentials(value: str) -> str:
    if not value:
        generated = "lookalike:" + secrets.token_urlsafe(18)
        print(f"flower: LOOKALIKE_FLOWER_BASIC_AUTH is not set; this run's login is {generated} "
              "(set LOOKALIKE_FLOWER_BASIC_AUTH=user:password in .env to choose one)", file=sys.stderr, flush=True)
        return generated
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not (user and colon and password):
            sys.exit("flower: LOOKALIKE_FLOWER_BASIC_AUTH must be user:password[,user:password...], "
                     "each with a user and a password")
    return value


def main(command: list[str]) -> None:
    if not command:
        sys.exit("flower: no command to run")
    os.environ["FLOWER_BASIC_AUTH"] = credentials(os.environ.get("FLOWER_BASIC_AUTH", ""))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
