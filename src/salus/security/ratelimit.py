"""In-process rate limiting (sliding window) for the token endpoint and sign-ins.

Per process: behind a load balancer with several Salus processes each keeps
its own window, which bounds the total at processes × limit; account lockout
(the directory) bounds password guessing independently of addresses.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from salus.errors import RateLimited

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        """Count one request for ``key``; raise :class:`RateLimited` past the limit."""
        now = self.clock()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_keys:
                    self._evict(now)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                retry = max(1, math.ceil(hits[0] + self.window - now))
                raise RateLimited(headers={"Retry-After": str(retry)})
            hits.append(now)

    def _evict(self, now: float) -> None:
        stale = [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:  # still full: drop the oldest half
            for key in list(self._hits)[: self.max_keys // 2]:
                del self._hits[key]
