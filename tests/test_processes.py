"""shared/processes.py, with tiny Python children: readiness within a whole deadline, an early failure (with the
log's tail) when the child dies, and a stop that leaves nothing running -- also a child that ignores SIGTERM,
and the children of the child, in its process group or in a session of their own."""

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from shared.processes import ChildProcess, NotReady, stop_all, wait_for

# A child that prints the pids of the children it starts (one in its group, one in a session of its own), then
# "ready", and sleeps; with "ignore" as its argument it ignores SIGTERM.
PARENT = textwrap.dedent("""
    import signal, subprocess, sys, time
    if sys.argv[1:] == ["ignore"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    in_group = subprocess.Popen(sleeper)
    own_session = subprocess.Popen(sleeper, start_new_session=True)
    print("children", in_group.pid, own_session.pid, flush=True)
    print("ready", flush=True)
    time.sleep(120)
""")


def python(name: str, code: str, folder: Path, *args: str, **options) -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-c", code, *args], log_path=folder / f"{name}.log", **options)


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` has ended (a zombie that nobody has reaped yet counts: it runs nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def children_of(child: ChildProcess) -> list[int]:
    line = child.wait_until(lambda: [line for line in child.output().splitlines() if line.startswith("children")],
                            "its children", timeout=60, interval=0.05)
    return [int(pid) for pid in line[0].split()[1:]]


def test_a_ready_child_is_waited_for_and_stopped_by_the_context(tmp_path):
    code = "import time; time.sleep(0.3); print('listening on 1234', flush=True); time.sleep(120)"
    with python("server", code, tmp_path) as child:
        answer = child.wait_until(lambda: "listening" in child.output() and child.output().split()[-1],
                                  "its address", timeout=60, interval=0.05)
        assert answer == "1234"  # the check's own answer
        assert child.poll() is None
        pid = child.pid
    assert child.returncode == -signal.SIGTERM
    assert gone(pid)
    assert child.output() == "listening on 1234\n"


def test_checks_that_fail_count_as_not_yet_until_the_whole_deadline(tmp_path):
    calls = []

    def ready() -> bool:
        calls.append(time.monotonic())
        raise ConnectionError("refused")

    with python("sleeper", "import time; time.sleep(120)", tmp_path) as child:
        started = time.monotonic()
        with pytest.raises(NotReady, match=r"^sleeper: no an answer after 0.5 s "
                                           r"\(last check: ConnectionError\('refused'\)\)"):
            child.wait_until(ready, "an answer", timeout=0.5, interval=0.1)
        assert 0.5 <= time.monotonic() - started < 5
        assert len(calls) >= 3


def test_a_child_that_dies_fails_the_wait_at_once_with_its_log(tmp_path):
    code = "import sys; print('line one'); print('cannot bind: address in use', flush=True); sys.exit(3)"
    child = python("doomed", code, tmp_path).start()
    started = time.monotonic()
    with pytest.raises(NotReady, match=r"^doomed exited with 3 before readiness:\nline one\ncannot bind"):
        child.wait_until(lambda: False, "readiness", timeout=120)
    assert time.monotonic() - started < 30  # not the whole 120 s
    assert child.stop() == 3


def test_waiting_on_several_fails_when_any_of_them_dies(tmp_path):
    steady = python("steady", "import time; time.sleep(120)", tmp_path).start()
    dying = python("dying", "import time; time.sleep(0.3); print('out of memory', flush=True); raise SystemExit(1)",
                   tmp_path).start()
    try:
        with pytest.raises(NotReady, match=r"^dying exited with 1 before both up:\nout of memory"):
            wait_for(lambda: False, "both up", [steady, dying], timeout=120)
    finally:
        stop_all([steady, dying])
    assert (steady.returncode, dying.returncode) == (-signal.SIGTERM, 1)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period_with_its_children(tmp_path):
    child = python("stubborn", PARENT, tmp_path, "ignore").start()
    try:
        in_group, own_session = children_of(child)
        started = time.monotonic()
        assert child.stop(grace=0.5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 10
        assert gone(in_group) and gone(own_session)  # the group, and the descendant that left it
    finally:
        child.stop(grace=0)


def test_what_a_child_leaves_in_its_group_when_it_exits_is_stopped(tmp_path):
    child = python("leaver", PARENT, tmp_path).start()
    try:
        in_group, own_session = children_of(child)
        assert child.stop(grace=10) == -signal.SIGTERM  # it exits on SIGTERM at once, its child still running
        assert gone(in_group)
    finally:
        child.stop(grace=0)
        os.kill(own_session, signal.SIGKILL)  # (a graceful exit leaves a child's own sessions to it)


def test_stopping_a_child_already_reaped_by_its_caller_and_hurrying_several(tmp_path):
    reaped = python("reaped", "import time; time.sleep(120)", tmp_path).start()
    reaped.process.kill()
    reaped.process.wait()  # as tests that kill a worker do, before the fixture stops it
    assert reaped.stop() == -signal.SIGKILL

    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(120)")
    stubborn = [python(f"stubborn-{n}", code, tmp_path).start() for n in range(2)]
    for child in stubborn:
        child.wait_until(lambda child=child: "up" in child.output(), "up", timeout=60, interval=0.05)
    hurry = threading.Event()
    threading.Timer(0.5, hurry.set).start()
    started = time.monotonic()
    stop_all(stubborn, grace=60, hurry=hurry)  # one grace period for both, cut short by the hurry
    assert time.monotonic() - started < 10
    assert [child.returncode for child in stubborn] == [-signal.SIGKILL] * 2


def test_a_restart_appends_to_the_log(tmp_path):
    child = python("again", "print('run')", tmp_path)
    child.start().wait(60)
    child.start().wait(60)
    assert child.output() == "run\nrun\n"
    with pytest.raises(RuntimeError, match="has not been started"):
        ChildProcess("never", ["true"]).poll()
