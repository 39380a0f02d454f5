"""Starting, waiting for and stopping child processes: one shape for `make run` (scripts/run_local.py), the test
fixtures (tests/conftest.py) and the benchmarks (bench/).

Each of them used to carry its own ``subprocess.Popen``, readiness loop and stop -- five shapes -- and they
differed where it hurts: the benchmark's stack crashed on a slow first answer and, when it did not start, said
"see the log" and left it running; the benchmarks' workers were stopped with SIGTERM and a wait that raised,
without a SIGKILL, when they hung; a Celery readiness wait could not see its worker die and sat out its whole
timeout; and a child killed with SIGKILL left its own children (gunicorn's workers, say) running, since only the
child itself was ever signalled. Here, once:

- **A child of its own session.** Every child starts in a new session, so its process group holds it and
  whatever it starts: a terminal's Ctrl-C reaches only the parent (which stops its children in order), and a
  stop reaches the child's children too. Output goes to a log file (or the parent's own stdout and stderr);
  stdin is /dev/null.
- **Readiness with a whole deadline.** :meth:`ChildProcess.wait_until` polls a check until it answers truly.
  The deadline is one for the whole wait, taken once; a check that fails (raises) counts as "not yet" -- on a
  busy machine a first answer may be refused, slow or cut off -- and the error at the deadline names the last
  failure. A child that exits meanwhile fails the wait at once, with the tail of its log: nobody waits minutes
  for a process that died in its first second. :func:`wait_for` watches several children at once.
- **A stop that leaves nothing running**, as systemd's ``KillMode=mixed``: SIGTERM (or the child's own stop
  signal) to the child alone -- it stops its own children in its own order, as gunicorn's master and Celery
  do -- then, after a grace period (or at once, when the caller's ``hurry`` event is set), SIGKILL to its
  whole group and to every descendant that moved to a session of its own (run_local's parts, an embedded
  Redis); whatever is left of its group after it exits gets SIGKILL too. The child is always reaped.
  :func:`stop_all` stops several with one grace period for all of them.

The exit is watched without reaping it where possible (``waitid`` with ``WNOWAIT``): while the child is an
unreaped zombie its pid, the group's id, cannot be given to another process, so signalling the group can
never reach a stranger. The descendants come from ``/proc``. Where there is neither (macOS, before Python 3.13),
an exit is watched with ``poll`` and a stop reaches the child's group alone.
"""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

STOP_TIMEOUT_SECONDS = 30.0
TAIL_CHARS = 5000


class NotReady(RuntimeError):
    """A child exited before it was ready, or was not ready by the deadline (the message has its log's tail)."""


class ChildProcess:
    """One child process: ``command`` run in ``cwd`` with ``env`` (None: this process's environment), its stdout and
    stderr to ``log_path`` (None: to this process's own). :meth:`start` may be called again once it has exited (a
    restart); the log is then appended to. As a context manager it is started (unless it was) and stopped."""

    def __init__(self, name: str, command: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, log_path: str | Path | None = None,
                 stop_timeout: float = STOP_TIMEOUT_SECONDS, stop_signal: int = signal.SIGTERM):
        self.name = name
        self.command = list(command)
        self.env = env
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path is not None else None
        self.stop_timeout = stop_timeout
        self.stop_signal = stop_signal
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None  # time.monotonic() of the latest start
        self._log_mode = "wb"  # the first start empties the log; a restart appends to it

    # --- starting ------------------------------------------------------------------------------------------

    def start(self) -> "ChildProcess":
        if self.process is not None:
            if self.process.poll() is None:
                raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
            self._signal_group(signal.SIGKILL)  # what its last run left behind (gunicorn's workers, say)
        if self.log_path is None:
            self.process = self._popen(None, None)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open(self._log_mode) as log:  # the child holds its own copy of the descriptor
                self.process = self._popen(log, subprocess.STDOUT)
            self._log_mode = "ab"
        self.started_at = time.monotonic()
        return self

    def _popen(self, stdout, stderr) -> subprocess.Popen:
        return subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, start_new_session=True)

    # --- what it is doing ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def poll(self) -> int | None:
        """Its exit status once it has exited (negative: killed by that signal), else None (reaps it)."""
        return self._started().poll()

    def exited(self) -> bool:
        """Whether the child has exited (or never started) -- without reaping it, unlike :meth:`poll`: so its pid
        keeps naming its group until :meth:`stop`."""
        if self.process is None or self.process.returncode is not None:
            return True
        if not hasattr(os, "waitid"):
            return self.process.poll() is not None
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped behind Popen's back
            return True

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status, once it has exited (``subprocess.TimeoutExpired`` after ``timeout`` seconds)."""
        return self._started().wait(timeout)

    def send_signal(self, signum: int, group: bool = False) -> None:
        """Send ``signum`` to the child, or with ``group`` to its whole process group (as a terminal sends
        Ctrl-C to a foreground job); nothing if it has gone."""
        if group:
            self._signal_group(signum)
        elif not self.exited():
            self._started().send_signal(signum)

    def output(self) -> str:
        """Everything in its log so far ("" without one)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = TAIL_CHARS) -> str:
        """The end of its log, for an error message."""
        if self.log_path is None:
            return "(its output is not logged to a file)"
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4 * chars))
                return log.read().decode(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # --- waiting for readiness -----------------------------------------------------------------------------

    def wait_until(self, ready: Callable[[], Any], what: str, timeout: float = 180.0, interval: float = 0.2) -> Any:
        """Poll ``ready()`` until it answers truly, and return that answer: see :func:`wait_for`."""
        return wait_for(ready, what, [self], timeout, interval)

    # --- stopping ------------------------------------------------------------------------------------------

    def stop(self, grace: float | None = None, hurry: threading.Event | None = None) -> int | None:
        """Stop it and its children (see :func:`stop_all`); its exit status (None if it never started)."""
        stop_all([self], grace, hurry)
        return self.returncode

    def __enter__(self) -> "ChildProcess":
        return self if self.process is not None and self.process.poll() is None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the parts of a stop -------------------------------------------------------------------------------

    def _started(self) -> subprocess.Popen:
        if self.process is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self.process

    def _signal_group(self, signum: int) -> None:
        """Signal what is in the child's process group. Once the child has been reaped its pid (the group's id)
        is free again only if the group is empty; a process that has that pid now means exactly that, and
        then the group is left alone: it is someone else's."""
        if self.process is None:
            return
        group = self.process.pid
        if self.process.returncode is not None:
            try:
                os.kill(group, 0)
                return
            except ProcessLookupError:
                pass  # no process has the pid: any group by that id is what is left of ours
            except PermissionError:
                return
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill(self) -> None:
        """SIGKILL for the child, its group, and its descendants that are in sessions of their own."""
        strays = descendants(self._started().pid)  # before the kill: then they are orphans, no longer found
        self._signal_group(signal.SIGKILL)
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for(ready: Callable[[], Any], what: str, children: Iterable[ChildProcess], timeout: float,
             interval: float = 0.2) -> Any:
    """Poll ``ready()`` every ``interval`` seconds until it answers truly, and return that answer.

    ``timeout`` is one deadline for the whole wait (give a check a timeout of its own, shorter than this). A
    check that raises counts as "not yet"; the error at the deadline names the last failure. If one of
    ``children`` exits first, :class:`NotReady` at once, with its exit status and the tail of its log."""
    children = list(children)
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            answer = ready()
            if answer:
                return answer
            last_error = None
        except Exception as exc:  # noqa: BLE001 - whatever it was, the child is not ready yet
            last_error = exc
        for child in children:
            if child.poll() is not None:
                raise NotReady(f"{child.name} exited with {child.returncode} before {what}:\n{child.tail()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = f" (last check: {last_error!r})" if last_error is not None else ""
            if len(children) == 1:
                logs = children[0].tail()
            else:
                logs = "\n".join(f"--- {child.name}:\n{child.tail()}" for child in children)
            names = ", ".join(child.name for child in children) or "the check"
            raise NotReady(f"{names}: no {what} after {timeout:g} s{last}:\n{logs}")
        time.sleep(min(interval, remaining))


def stop_all(children: Iterable[ChildProcess], grace: float | None = None,
             hurry: threading.Event | None = None) -> None:
    """Stop every child at once: its stop signal to each (to the child alone), then up to ``grace`` seconds
    (default: each child's ``stop_timeout``) -- cut short when ``hurry`` is set -- for them to exit; then
    SIGKILL for any still running, with their groups and descendants. What is left of a child's group after it
    exits is killed too. Every child is reaped."""
    children = [child for child in children if child.process is not None]
    now = time.monotonic()
    deadlines = {}
    for child in children:
        deadlines[id(child)] = now + (child.stop_timeout if grace is None else grace)
        if not child.exited():
            try:
                os.kill(child._started().pid, child.stop_signal)  # not Popen.send_signal: that would reap it
            except ProcessLookupError:
                pass
    try:
        waiting = [child for child in children if not child.exited()]
        while waiting and not (hurry is not None and hurry.is_set()):
            now = time.monotonic()
            waiting = [child for child in waiting if not child.exited() and now < deadlines[id(child)]]
            if waiting:
                time.sleep(0.05)
    finally:  # also when the wait is interrupted (a KeyboardInterrupt): nothing is left running
        for child in children:
            if not child.exited():
                child._kill()
            child._signal_group(signal.SIGKILL)  # what is left of its group (the unreaped child holds its id)
            child._started().wait()


def descendants(pid: int) -> list[int]:
    """The pids of every process descended from ``pid`` now, whatever their session (from /proc)."""
    children: dict[int, list[int]] = {}
    if not os.path.isdir("/proc"):
        return []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])  # after "pid (name) state"
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found
