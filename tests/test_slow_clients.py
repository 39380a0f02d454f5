"""Clients that hold the API's threads -- long polls, half-sent requests -- leave /healthz answering.

Against the real gunicorn API (one process, 16 threads, as the fixtures run it), and through
the real nginx with the repo's own proxy config (deploy/nginx/lookalike.conf).
"""

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from shared import keys
from shared.embedded_redis import free_port
from shared.settings import Settings
from tests.conftest import REPO

POLLS = 48
HEALTHZ_SECONDS = 1.0


def healthz_answers_quickly(base_url: str, times: int = 5) -> list[float]:
    """How long each of ``times`` /healthz calls took (each must answer 200 within HEALTHZ_SECONDS)."""
    took = []
    for _ in range(times):
        started = time.monotonic()
        response = requests.get(f"{base_url}/healthz", timeout=HEALTHZ_SECONDS)
        took.append(time.monotonic() - started)
        assert response.status_code == 200
    return took


def test_long_polls_leave_healthz_answering(api_url, store, service_env):
    """48 concurrent ?wait=30 polls on tasks that cannot finish: a few wait, the rest are answered at once."""
    def setting(name: str) -> int:  # as the test API runs: its environment, else the default
        return int(service_env.get(f"LOOKALIKE_{name.upper()}", Settings.model_fields[name].default))

    # All from one address with keys off: one caller's share of the process's waiting polls.
    per_caller = min(setting("max_waiting_polls_per_key"), setting("max_waiting_polls"))
    task_ids = [uuid.uuid4().hex for _ in range(POLLS)]
    # Records only, never enqueued: no worker can take them, so they stay queued until this test finishes them.
    store.submit([(task_id, "query", {"collection": f"never-{task_id}"}, None) for task_id in task_ids])
    answers: dict[str, requests.Response] = {}
    answered = threading.Condition()

    def poll(task_id: str) -> None:
        try:
            response = requests.get(f"{api_url}/v1/tasks/{task_id}?wait=30", timeout=90)
        except requests.RequestException as exc:  # recorded, so the test fails with it rather than hangs
            response = exc
        with answered:
            answers[task_id] = response
            answered.notify_all()

    def waiting() -> int:
        counts = store.redis.pubsub_numsub(*(keys.task_done_channel(task_id) for task_id in task_ids))
        return sum(count for _, count in counts)

    threads = [threading.Thread(target=poll, args=(task_id,), daemon=True) for task_id in task_ids]
    try:
        for thread in threads:
            thread.start()
        # The event: every poll has been answered at once but those allowed to wait, which are waiting.
        deadline = time.monotonic() + 20
        with answered:
            while not (len(answers) == POLLS - per_caller and waiting() == per_caller):
                assert time.monotonic() < deadline, f"{len(answers)} answered, {waiting()} waiting"
                answered.wait(0.1)
        for response in answers.values():
            assert response.status_code == 200 and response.json()["state"] == "queued"  # as it stands: not an error
            assert response.headers["Retry-After"] == "1"
        healthz_answers_quickly(api_url)
    finally:
        for task_id in task_ids:
            store.finish_task(task_id, "failed", error={"code": "internal_error", "message": "test", "details": {}})
        for thread in threads:
            thread.join(60)
        store.redis.delete(*(keys.task(task_id) for task_id in task_ids))
    finished = [response for response in answers.values() if response.json()["state"] == "failed"]
    assert len(finished) == per_caller  # the waiting polls answered as soon as their tasks finished


# --- Through the real nginx with the repo's config ----------------------------------------------

NGINX_CONFIG = REPO / "deploy" / "nginx" / "lookalike.conf"
HALF_SENT = 40


def nginx_binary() -> str:
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        pytest.fail("nginx is not installed, so the proxy config goes untested: `apt-get install nginx-light` "
                    "(`make test` installs it where it can)")
    return found


@pytest.fixture
def proxy(api_url, tmp_path) -> str:
    """nginx running deploy/nginx/lookalike.conf, its upstream pointed at the test API; its base URL."""
    api_port, port = api_url.rsplit(":", 1)[1], free_port()
    server = NGINX_CONFIG.read_text()
    assert server.count("server api:8000;") == 1 and server.count("listen 8000;") == 1
    server = server.replace("server api:8000;", f"server 127.0.0.1:{api_port};")
    server = server.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    (tmp_path / "lookalike.conf").write_text(server)
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""  # a root master would hand its workers to nobody
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {tmp_path}/lookalike.conf;
}}
""")
    process = subprocess.Popen([nginx_binary(), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once /healthz answers through it; refused or slow answers are "not yet"
            try:
                if requests.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            error_log = Path(tmp_path / "error.log")
            assert process.poll() is None, f"nginx exited: {error_log.read_text() if error_log.exists() else ''}"
            assert time.monotonic() < deadline, "nginx did not answer /healthz"
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_half_sent_requests_through_the_proxy_leave_healthz_answering(proxy):
    """40 requests without a key that stop halfway -- in their headers, or in their bodies -- hold no gunicorn
    thread."""
    host, port = proxy.removeprefix("http://").split(":")
    stalled = []
    try:
        for n in range(HALF_SENT):
            connection = socket.create_connection((host, int(port)), timeout=10)
            if n % 2:  # headers not finished
                connection.sendall(b"GET /v1/collections HTTP/1.1\r\nHost: lookalike\r\nX-Slow: ")
            else:  # headers whole, a tenth of the body
                connection.sendall(b"POST /v1/collections/photos/images HTTP/1.1\r\nHost: lookalike\r\n"
                                   b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                                   + b"x" * 10_000)
            stalled.append(connection)
        healthz_answers_quickly(proxy, times=10)
        for connection in stalled:  # all still held open by nginx, none answered yet
            connection.setblocking(False)
            with pytest.raises(BlockingIOError):
                connection.recv(1, socket.MSG_PEEK)
    finally:
        for connection in stalled:
            connection.close()
