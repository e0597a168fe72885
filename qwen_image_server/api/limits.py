"""Per-key request rates (moving windows from the ``limits`` library), as the hosted API limits them.

Two kinds of window: every request a key makes, counted by the front door before its body is read, and
the hosted API's per-model submission rates. Those count per served weights, not per name: the dated
aliases of a model (``qwen-image-2.0``, ``qwen-image-2.0-pro-2026-04-22``, ...) share one window per key,
so rotating through them buys no extra rate.

Counters live in this process's memory; a shared ``limits`` storage (Redis, say) is the change when
several replicas serve one set of keys.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from qwen_image_server.engine.registry import ModelSpec
from qwen_image_server.errors import RateQuotaExceeded
from qwen_image_server.settings import RateLimit

_ANY_REQUEST = "any request"


class RateLimiter:
    def __init__(self, limits_by_model: dict[str, RateLimit], enabled: bool, key_requests_per_second: int) -> None:
        self.limits_by_model = limits_by_model
        self.enabled = enabled
        self.key_requests = RateLimitItemPerSecond(key_requests_per_second)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def limit_for(self, model: str) -> RateLimit:
        return self.limits_by_model.get(model) or self.limits_by_model.get("*") or RateLimit()

    def hit_key(self, key_id: str) -> None:
        """Counts one request of the key, whatever it asks; raises ``RateQuotaExceeded`` past the window."""
        if self.enabled:
            self._hit([self.key_requests], key_id, _ANY_REQUEST, "Requests rate limit exceeded for this API key")

    def hit(self, key_id: str, spec: ModelSpec) -> None:
        """Counts one submission for ``spec``'s weights; raises ``RateQuotaExceeded`` (with Retry-After)."""
        if not self.enabled:
            return
        limit = self.limit_for(spec.name)
        items: list[RateLimitItem] = []
        if limit.per_second:
            items.append(RateLimitItemPerSecond(limit.per_second))
        if limit.per_minute:
            items.append(RateLimitItemPerMinute(limit.per_minute))
        self._hit(items, key_id, spec.source, f"Requests rate limit exceeded for {spec.name}")

    def _hit(self, items: list[RateLimitItem], key_id: str, group: str, what: str) -> None:
        for item in items:
            if not self._limiter.test(item, key_id, group):
                reset_at = self._limiter.get_window_stats(item, key_id, group).reset_time
                raise RateQuotaExceeded(math.ceil(reset_at - time.time()),
                                        f"{what} ({item.amount} per {item.GRANULARITY.name}), please try again later.")
        for item in items:
            self._limiter.hit(item, key_id, group)

    def check_concurrency(self, model: str, active_async_tasks: int) -> None:
        limit = self.limit_for(model).concurrent_async_tasks
        if self.enabled and limit is not None and active_async_tasks >= limit:
            raise RateQuotaExceeded(1, f"Too many concurrent tasks for {model}: {active_async_tasks} of at most "
                                       f"{limit} are still pending or running.")
