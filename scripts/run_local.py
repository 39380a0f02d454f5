"""`make run`: Redis (embedded unless LOOKALIKE_REDIS_URL is set), one worker and the API, in the foreground.

Ctrl-C stops everything in order -- API, then worker (which finishes its current tasks),
then the embedded Redis -- and leaves nothing running. If any part exits on its own, the
rest are stopped too and its exit status is returned.
"""

import os
import signal
import subprocess
import sys
import time

from shared.embedded_redis import EmbeddedRedis
from shared.settings import get_settings
from worker.weights import WeightsUnavailable, resolve_weights

STOP_TIMEOUT_SECONDS = 30


def choose_weights(env: dict) -> None:
    """Use ImageNet weights when they can be had; offline, fall back loudly to random weights."""
    if "LOOKALIKE_WEIGHTS" in env:
        return
    try:
        resolve_weights("imagenet", seed=0)
    except WeightsUnavailable as exc:
        env["LOOKALIKE_WEIGHTS"] = "random"
        print(f"\n*** {exc}\n*** make run continues with RANDOM weights: scores will not reflect image content.\n",
              file=sys.stderr)


def start(name: str, command: list[str], env: dict) -> tuple[str, subprocess.Popen]:
    # A session of its own, so the terminal's Ctrl-C reaches only this supervisor, which
    # then stops the parts in order instead of all at once.
    return name, subprocess.Popen(command, env=env, start_new_session=True)


def stop(name: str, process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    print(f"make run: stopping {name}", file=sys.stderr)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Ctrl-C and a plain `kill` both mean "stop everything cleanly" (set explicitly: a
    # process started in the background inherits an ignored SIGINT).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    settings = get_settings()
    env = dict(os.environ)
    embedded = None
    if "redis_url" not in settings.model_fields_set:
        embedded = EmbeddedRedis(settings.data_dir / "redis", settings.embedded_redis_port).start()
        env["LOOKALIKE_REDIS_URL"] = embedded.url
        print(f"make run: embedded Redis on {embedded.url}, data in {embedded.data_dir}", file=sys.stderr)
    choose_weights(env)
    if "LOOKALIKE_AUTH" not in env:
        env["LOOKALIKE_AUTH"] = "false"
        env.setdefault("LOOKALIKE_RATE_LIMIT", "")  # every local client shares one address
        print("make run: API keys and rate limits are OFF for local use "
              "(set LOOKALIKE_AUTH=true to require keys)", file=sys.stderr)
    parts = [
        start("worker", [sys.executable, "-m", "worker"], env),
        start("api", [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"], env),
    ]
    print(f"make run: API on http://{settings.host}:{settings.port} (Ctrl-C stops everything)", file=sys.stderr)
    status = 0
    try:
        while all(process.poll() is None for _, process in parts):
            time.sleep(0.5)
        exited = next((name, process) for name, process in parts if process.poll() is not None)
        status = exited[1].returncode or 1
        print(f"make run: {exited[0]} exited with status {exited[1].returncode}; stopping the rest", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        for name, process in reversed(parts):
            stop(name, process)
        if embedded is not None:
            print("make run: stopping Redis", file=sys.stderr)
            embedded.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
