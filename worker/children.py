"""What every child process a worker starts does first, whichever pool it serves.

Both pools (worker/parse_pool.py, worker/keyphrases/pool.py) spawn their children; these helpers
run in a child, at the start of its pool's initializer.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading


def exit_with_parent() -> None:
    """Exit as soon as the worker that started this process is gone.

    A worker killed with SIGKILL cannot stop its pools, and a child busy in C code (a parse, a
    forward pass) would not notice its closed pipe until it is done; without this it would keep a
    core and its memory for nothing.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def die_on_sigterm() -> None:
    """Let SIGTERM end this process at once, as the kernel's default does.

    A Python handler (pebble installs one) runs only between bytecodes, so a child inside one long
    C call would outlive its own kill by seconds; nothing in these children needs cleaning up."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
