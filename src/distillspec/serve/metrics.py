"""A running server's counters at GET /metrics, in Prometheus's text format.

Why: an operator watches a server's load, speed, acceptance and prompt-cache use from
outside it, as llama-server's `--metrics` allows; Prometheus's format is what monitoring
stacks scrape, and `prometheus_client` writes it. Each server has its own registry, so
several servers in one process (the tests) never mix their counts.

Times are the client's view: from the request's arrival (queue wait included) to its first
tokens, and to its end.
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: where the request-time histograms split (seconds): a reply on 2 cores takes seconds, a
#: burst's last first token tens of seconds
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)

#: how a request ended: served, failed in the engine, left by its client, refused because the
#: slots and the queue were full (503), or refused as malformed (400)
OUTCOMES = ("done", "error", "cancelled", "rejected", "invalid")


class ServerMetrics:
    """The counters of one server; `load()` gives the scheduler's slots, busy slots, queued
    requests and engine steps at each scrape (`Scheduler.load`)."""

    def __init__(self, load: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.requests = Counter("distillspec_requests", "Requests by how they ended: " + ", ".join(OUTCOMES),
                                ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.requests.labels(outcome)
        self.prompt_tokens = Counter("distillspec_prompt_tokens", "Prompt tokens of served requests",
                                     registry=self.registry)
        self.cached_tokens = Counter("distillspec_prompt_tokens_cached",
                                     "Prompt tokens a slot kept from its request before (the prompt cache)",
                                     registry=self.registry)
        self.completion_tokens = Counter("distillspec_completion_tokens", "Tokens generated for served requests",
                                         registry=self.registry)
        self.drafted = Counter("distillspec_drafted_tokens", "Tokens the draft proposed", registry=self.registry)
        self.accepted = Counter("distillspec_accepted_tokens", "Drafted tokens the target accepted",
                                registry=self.registry)
        self.first_token = Histogram("distillspec_time_to_first_token_seconds",
                                     "From a request's arrival to its first tokens", buckets=SECONDS_BUCKETS,
                                     registry=self.registry)
        self.request_time = Histogram("distillspec_request_seconds", "From a request's arrival to its end",
                                      buckets=SECONDS_BUCKETS, registry=self.registry)
        self.registry.register(_LoadCollector(load))

    def request(self) -> "RequestTimer":
        return RequestTimer(self)

    def refused(self, outcome: str) -> None:
        self.requests.labels(outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One request's times and outcome, counted once however it ends."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics, self.arrived = metrics, time.perf_counter()
        self.first_seen = self.ended = False

    def tokens(self) -> None:
        if not self.first_seen:
            self.first_seen = True
            self.metrics.first_token.observe(time.perf_counter() - self.arrived)

    def done(self, prompt_tokens: int, result) -> None:
        if self.ended:
            return
        stats, metrics = result.stats, self.metrics
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.cached_tokens.inc(stats.prompt_tokens_kept)
        metrics.completion_tokens.inc(len(result.tokens))
        metrics.drafted.inc(stats.drafted)
        metrics.accepted.inc(stats.accepted)
        metrics.request_time.observe(time.perf_counter() - self.arrived)
        self._end("done")

    def failed(self) -> None:
        self._end("error")

    def left(self) -> None:
        """The client went away; nothing if the request had already ended."""
        self._end("cancelled")

    def _end(self, outcome: str) -> None:
        if not self.ended:
            self.ended = True
            self.metrics.requests.labels(outcome).inc()


class _LoadCollector:
    """The scheduler's state, read at each scrape."""

    def __init__(self, load: Callable[[], dict]):
        self.load = load

    def collect(self):
        state = self.load()
        yield GaugeMetricFamily("distillspec_slots", "Slots: requests generated at once", value=state["slots"])
        yield GaugeMetricFamily("distillspec_slots_busy", "Slots generating now", value=state["busy"])
        yield GaugeMetricFamily("distillspec_requests_queued", "Requests waiting for a slot", value=state["queued"])
        yield CounterMetricFamily("distillspec_engine_steps", "Engine steps (one target pass for all busy slots)",
                                  value=state["steps"])
