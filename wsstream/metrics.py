"""Process-wide counters for ``/metrics``, owned by the server (no module globals)."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def render(self, extra: dict[str, float] | None = None, live: Counter[str] | None = None) -> str:
        """Prometheus text exposition format; ``live`` adds counts still held by open sessions
        (hot-path counters that a session publishes only when it ends)."""
        lines = []
        for name, value in sorted((self.counters + (live or Counter())).items()):
            lines += [f"# TYPE wsstream_{name} counter", f"wsstream_{name} {value}"]
        for name, value in sorted({**self.gauges, **(extra or {})}.items()):
            lines += [f"# TYPE wsstream_{name} gauge", f"wsstream_{name} {value}"]
        return "\n".join(lines) + "\n"
