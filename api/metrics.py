"""Prometheus counters and gauges in the text exposition format, with no client library."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help_text = help_text
        self.labels = labels
        self.values: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(labels[name] for name in self.labels)] += amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(labels[name] for name in self.labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_label_text(self.labels, key)} {value:g}")
        return lines


class Gauge:
    """A value read when /metrics is scraped."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name = name
        self.help_text = help_text
        self.read = read

    def render(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help_text}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {self.read():g}",
        ]


def _label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """The service's metrics, under the names DESIGN.md fixes."""

    def __init__(self) -> None:
        self.executions = Counter("pe_executions_total", "Runs executed by a worker", ("runner", "status"))
        self.requests = Counter("pe_requests_total", "HTTP requests answered", ("route", "status"))
        self.cache_hits = Counter("pe_cache_hits_total", "Runs answered from the result cache")
        self.goaways = Counter("pe_goaway_sent_total", "HTTP/2 GOAWAY frames sent", ("reason",))
        self.streams_refused = Counter("pe_streams_refused_total", "HTTP/2 streams reset with REFUSED_STREAM")
        self.results_discarded = Counter(
            "pe_results_discarded_total", "Results uploaded for a lease no longer held (ran elsewhere)"
        )
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        lines: list[str] = []
        counters = (
            self.executions, self.requests, self.cache_hits, self.goaways, self.streams_refused,
            self.results_discarded,
        )  # fmt: skip
        for metric in (*counters, *self.gauges):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
