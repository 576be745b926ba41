"""Ctrl-C as a request to stop.  The first SIGINT only asks: the run stops at its next safe point
(between two training batches, trials or scores), where ``check`` raises KeyboardInterrupt in
code that expects it.  A KeyboardInterrupt raised wherever the signal lands can instead hit a
garbage-collection callback, where Python prints a traceback and swallows it: the search would
go on.  A second Ctrl-C interrupts at once."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_requested = False


def _ask(signum, frame) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    # os.write, not print: a print here could land inside another print to the same stream
    os.write(2, b"\nstopping at the next safe point, writing what is done (Ctrl-C again to stop at once)\n")


@contextmanager
def stop_on_request() -> Iterator[None]:
    """Within the block, SIGINT asks to stop (main thread only: signals go there)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old, _requested = signal.signal(signal.SIGINT, _ask), False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        _requested = False


def requested() -> bool:
    """Whether a stop was asked for (work that is only nice to have skips itself then)."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt here if a stop was asked for."""
    if _requested:
        raise KeyboardInterrupt
