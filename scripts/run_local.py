"""`make run`: Redis (embedded unless LOOKALIKE_REDIS_URL is set; with a Cluster or Sentinel store and no
LOOKALIKE_BROKER_URL, an embedded Redis for the broker alone), the worker, the webhook deliverer and the API,
in the foreground, supervised.

A part that exits on its own is started again (after 1 s, then waits doubling up to 30 s
while it keeps dying), as a process supervisor in production would; the others go on (the
workers wait out a Redis restart by themselves). Only a part that cannot start -- exit
status 2, for example weights that cannot be had -- or one that keeps dying stops
everything, with its status. Ctrl-C stops everything in order -- API, then workers (which
finish their current tasks), then the embedded Redis -- and leaves nothing running. Every
part runs in a session of its own, so the terminal's Ctrl-C reaches only this supervisor.
"""

import os
import signal
import sys
import threading
import time

from shared.embedded_redis import EmbeddedRedis
from shared.processes import ChildProcess
from shared.settings import get_settings
from worker.weights import WeightsUnavailable, resolve_weights

STOP_TIMEOUT_SECONDS = 30
CANNOT_START = 2  # the exit status of a part that will not start however often it is tried
FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
CRASH_LOOP_RESTARTS = 5  # this many restarts, each after under a minute of running: give up
STEADY_SECONDS = 60.0


def log(message: str) -> None:
    print(f"make run: {message}", file=sys.stderr, flush=True)


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


class Part:
    """One supervised process (a shared.processes.ChildProcess: a session of its own, its output to the
    terminal), restarted when it exits unasked."""

    def __init__(self, name: str, command: list[str], env: dict):
        self.name = name
        self.child = ChildProcess(name, command, env=env, stop_timeout=STOP_TIMEOUT_SECONDS)
        self.restarts = 0  # in a row, each after a short life
        self.restart_at: float | None = None  # when it is due to start again, while it is down
        self.delay = FIRST_RESTART_DELAY_SECONDS

    def start(self) -> None:
        self.child.start()
        self.restart_at = None

    def check(self) -> int | None:
        """Restart the part when it has exited and its wait is over; the status to stop everything with, if any."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                log(f"starting {self.name} again")
                self.start()
            return None
        status = self.child.poll()
        if status is None:
            return None
        if status == CANNOT_START:
            log(f"{self.name} cannot start (exit status {status}); stopping the rest")
            return status
        if now - self.child.started_at >= STEADY_SECONDS:  # it ran a while: a new failure, not a crash loop
            self.restarts, self.delay = 0, FIRST_RESTART_DELAY_SECONDS
        if self.restarts >= CRASH_LOOP_RESTARTS:
            log(f"{self.name} exited with status {status} {self.restarts + 1} times in a row; stopping the rest")
            return status or 1
        log(f"{self.name} exited with status {status}; starting it again in {self.delay:g} s")
        self.restart_at = now + self.delay
        self.restarts += 1
        self.delay = min(MAX_RESTART_DELAY_SECONDS, 2 * self.delay)
        return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL (its children too) after STOP_TIMEOUT_SECONDS -- at once if Ctrl-C comes again
        meanwhile."""
        if self.child.process is None:
            return
        if not self.child.exited():
            log(f"stopping {self.name}")
        self.child.stop(hurry=HURRY)  # also reaps it, and what is left of its group, when it had exited


# Set by a second Ctrl-C (or SIGTERM) while stopping: the parts still running are killed, not waited for.
HURRY = threading.Event()


def interrupt(signum, frame) -> None:
    signal.signal(signal.SIGINT, hurry)  # from now on a second Ctrl-C speeds the stop up, never abandons it
    signal.signal(signal.SIGTERM, hurry)
    raise KeyboardInterrupt


def hurry(signum, frame) -> None:
    log("stopping the rest now")
    HURRY.set()


def main() -> int:
    # Ctrl-C and a plain `kill` both mean "stop everything cleanly" (set explicitly: a
    # process started in the background inherits an ignored SIGINT).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    settings = get_settings()
    env = dict(os.environ)
    embedded = None
    if "redis_url" not in settings.model_fields_set:  # no store given: an embedded Redis for everything
        if settings.redis_mode != "single":
            log(f"LOOKALIKE_REDIS_MODE={settings.redis_mode} needs LOOKALIKE_REDIS_URL (the store's nodes)")
            return CANNOT_START
        embedded = EmbeddedRedis(settings.data_dir / "redis", settings.embedded_redis_port).start()
        env["LOOKALIKE_REDIS_URL"] = embedded.url
        log(f"embedded Redis on {embedded.url}, data in {embedded.data_dir}")
    elif settings.redis_mode != "single" and not settings.broker_url:  # a clustered store: a Redis for the broker
        embedded = EmbeddedRedis(settings.data_dir / "broker", settings.embedded_redis_port).start()
        env["LOOKALIKE_BROKER_URL"] = embedded.url
        log(f"store: {settings.redis_mode} at {settings.redis_url}; embedded Redis for the broker on {embedded.url}")
    choose_weights(env)
    if "LOOKALIKE_AUTH" not in env:
        env["LOOKALIKE_AUTH"] = "false"
        env.setdefault("LOOKALIKE_RATE_LIMIT", "")  # every local client shares one address
        log("API keys and rate limits are OFF for local use (set LOOKALIKE_AUTH=true to require keys)")
    # The webhook deliverer serves its metrics on the next port, if the worker serves any.
    webhooks_env = env | {"LOOKALIKE_WORKER_METRICS_PORT": str(settings.worker_metrics_port + 1)
                          if settings.worker_metrics_port else "0"}
    parts = [
        Part("worker", [sys.executable, "-m", "worker"], env),
        Part("webhooks", [sys.executable, "-m", "worker", "--role", "webhooks"], webhooks_env),
        Part("api", [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"], env),
    ]
    status = 0
    try:
        for part in parts:
            part.start()
        log(f"API on http://{settings.host}:{settings.port} (Ctrl-C stops everything)")
        while status == 0:
            time.sleep(0.5)
            if embedded is not None and embedded.process.poll() is not None:
                log(f"embedded Redis exited with status {embedded.process.returncode}; starting it again")
                embedded.start()
            for part in parts:
                status = status or part.check() or 0
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, hurry)
        signal.signal(signal.SIGTERM, hurry)
        for part in reversed(parts):
            part.stop()
        if embedded is not None:
            log("stopping Redis")
            embedded.stop(timeout=1 if HURRY.is_set() else 10)
    return status


if __name__ == "__main__":
    sys.exit(main())
