"""Process-wide counters for ``/metrics``, owned by the server (no module globals)."""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        # name -> (label name, {label value: count}): one series per value, e.g. refusals by reason
        self.labelled: dict[str, tuple[str, dict[str, int]]] = {}

    def inc(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def declare(self, name: str, label: str, values: tuple[str, ...]) -> None:
        """A labelled counter whose series all show from the start (at 0), so that a rate over them is defined
        before the first event; the label's values are a fixed set (no series per client)."""
        _, counts = self.labelled.setdefault(name, (label, {}))
        for value in values:
            counts.setdefault(value, 0)

    def inc_labelled(self, name: str, value: str, by: int = 1) -> None:
        """Count one event of a ``declare``d counter under label ``value``."""
        counts = self.labelled[name][1]
        counts[value] = counts.get(value, 0) + by

    def render(self, extra: dict[str, float] | None = None, live: Counter[str] | None = None) -> str:
        """Prometheus text exposition format; ``live`` adds counts still held by open sessions
        (hot-path counters that a session publishes only when it ends)."""
        lines = []
        for name, value in sorted((self.counters + (live or Counter())).items()):
            lines += [f"# TYPE wsstream_{name} counter", f"wsstream_{name} {value}"]
        for name, (label, counts) in sorted(self.labelled.items()):
            lines.append(f"# TYPE wsstream_{name} counter")
            lines += [f'wsstream_{name}{{{label}="{key}"}} {n}' for key, n in sorted(counts.items())]
        for name, value in sorted({**self.gauges, **(extra or {})}.items()):
            lines += [f"# TYPE wsstream_{name} gauge", f"wsstream_{name} {value}"]
        return "\n".join(lines) + "\n"
