"""Servers in child processes of their own, for the benchmark scripts.

Job: :func:`child_process` runs a server function in a ``spawn``-ed child process (a fresh
interpreter, never a fork of a process that has initialised gRPC or OpenSSL), waits until it
says it serves, and stops it on the way out whatever happens. The server function hands
:func:`serve` what starts its server; :func:`serve` reports to the parent and waits to be
told to stop. A benchmark's server runs as it is
deployed, in a process of its own, so its client does not share a GIL with it.

Plain functions and a context manager, no pytest: the scripts run as ``python
benchmarks/<name>.py``, which puts this folder first on ``sys.path``; the child re-imports the
script, so its server function must be defined at module level there.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

#: What a ``start`` function of :func:`serve` returns when its backend is not installed.
SKIPPED: object = object()

#: Seconds a child process may take to import, build its backend and start serving.
START_TIMEOUT = 120.0
#: Seconds a child process may take to stop its server and clean up once told to.
STOP_TIMEOUT = 30.0


def send(conn: Connection, state: str, payload: object = None) -> None:
    """Child side: tell the parent ``state`` ("ready", "skipped", "failed") with a picklable
    ``payload`` (what a client needs, or a traceback's text); the parent may be gone already."""
    with contextlib.suppress(OSError):
        conn.send((state, payload))


def serve(conn: Connection, start: Callable[[contextlib.ExitStack], object]) -> None:
    """Child side: ``start(stack)`` starts the server, entering into ``stack`` what must be
    stopped and closed afterwards, and returns the picklable payload of "ready" (or
    :data:`SKIPPED`); then this waits until the parent says stop, or its end of the pipe
    closes, and leaves ``stack``. A failure of ``start`` is sent as "failed" with its
    traceback. Ctrl-C is ignored here: it is the parent's, which stops the child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.ExitStack() as stack:
        try:
            payload = start(stack)
        except Exception:
            send(conn, "failed", traceback.format_exc())
            return
        if payload is SKIPPED:
            send(conn, "skipped")
            return
        send(conn, "ready", payload)
        with contextlib.suppress(EOFError, OSError):
            conn.recv()


@contextlib.contextmanager
def child_process(
    what: str, target: Callable[..., None], *args: object
) -> Iterator[tuple[str, object]]:
    """``target(conn, *args)`` in a spawned child process; yields its first message, ("ready",
    payload) or ("skipped", None), once it has sent it. On leaving, the child is told to stop
    and waited for (terminated after :data:`STOP_TIMEOUT`), also when the parent leaves by an
    exception or Ctrl-C; a parent that dies closes the pipe, which stops the child too.

    Raises RuntimeError: the child failed (its traceback in the message), ended or was not
    ready within :data:`START_TIMEOUT`.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=target, args=(child, *args), name=f"kinko-bench {what}", daemon=True
    )
    # Started with SIGINT ignored (kept across exec), so a Ctrl-C while the child imports
    # cannot kill it halfway; this process decides when it stops.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    except BaseException:
        parent.close()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        child.close()
    try:
        if not parent.poll(START_TIMEOUT):
            raise RuntimeError(f"{what}: not serving within {START_TIMEOUT:.0f} s")
        try:
            state, payload = parent.recv()
        except EOFError:
            raise RuntimeError(f"{what}: child process ended before serving") from None
        if state == "failed":
            raise RuntimeError(f"{what}: failed in its child process:\n{payload}")
        yield str(state), payload
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            print(f"{what}: child process did not stop, terminating it", file=sys.stderr)
            process.terminate()
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
        elif process.exitcode:
            print(f"{what}: child process exit code {process.exitcode}", file=sys.stderr)
