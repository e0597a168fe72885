"""Per-key, per-model request rates (moving windows from the ``limits`` library), as the hosted API limits them.

Counters live in this process's memory; a shared ``limits`` storage (Redis, say) is the change when
several replicas serve one set of keys.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from qwen_image_server.errors import RateQuotaExceeded
from qwen_image_server.settings import RateLimit


class RateLimiter:
    def __init__(self, limits_by_model: dict[str, RateLimit], enabled: bool) -> None:
        self.limits_by_model = limits_by_model
        self.enabled = enabled
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def limit_for(self, model: str) -> RateLimit:
        return self.limits_by_model.get(model) or self.limits_by_model.get("*") or RateLimit()

    def hit(self, key_id: str, model: str) -> None:
        """Counts one request; raises ``RateQuotaExceeded`` (with Retry-After) when over either window."""
        if not self.enabled:
            return
        limit = self.limit_for(model)
        items: list[RateLimitItem] = []
        if limit.per_second:
            items.append(RateLimitItemPerSecond(limit.per_second))
        if limit.per_minute:
            items.append(RateLimitItemPerMinute(limit.per_minute))
        for item in items:
            if not self._limiter.test(item, key_id, model):
                reset_at = self._limiter.get_window_stats(item, key_id, model).reset_time
                raise RateQuotaExceeded(
                    math.ceil(reset_at - time.time()),
                    f"Requests rate limit exceeded for {model} ({item.amount} per {item.GRANULARITY.name}), "
                    "please try again later.")
        for item in items:
            self._limiter.hit(item, key_id, model)

    def check_concurrency(self, model: str, active_async_tasks: int) -> None:
        limit = self.limit_for(model).concurrent_async_tasks
        if self.enabled and limit is not None and active_async_tasks >= limit:
            raise RateQuotaExceeded(1, f"Too many concurrent tasks for {model}: {active_async_tasks} of at most "
                                       f"{limit} are still pending or running.")
