"""A stdlib HTTP server running in its own thread, stopped and joined when the block ends."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def serving_until_done(server: socketserver.BaseServer, thread: threading.Thread) -> Iterator[None]:
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
