"""The master's Prometheus metrics (``GET /metrics``, served by ``api_metrics.py``).

Two kinds, kept apart so that the hot path pays almost nothing:

* **Gauges are read at scrape time** from the master's memory by :class:`StateCollector`
  (jobs by state and user, nodes by state, GPUs per node): no bookkeeping on any event.
* **Counters and histograms are updated as things happen**, each with one cheap call:
  submissions and ends (by outcome) and the queue wait of each start, once per saved group
  of effects (:meth:`MasterMetrics.saved`: what was saved, not what was tried); the
  duration of each scheduling pass (:meth:`MasterMetrics.scheduling_pass`); the duration
  of each store commit (the committer's ``on_commit``).

Every :class:`MasterMetrics` has its own ``CollectorRegistry`` (never the process-global
one): tests and ``mgpu up`` may run several masters in one process. The series and their
labels are listed in README "Metrics".
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily, Metric

from mgpu.core import messages as m
from mgpu.core.models import ENDED_STATES, GpuInfo, JobState, NodeState
from mgpu.core.version import __version__ as VERSION
from mgpu.utils.metrics_auth import metrics_token

if TYPE_CHECKING:
    from mgpu.core.config import MasterConfig
    from mgpu.server.effects import Effects
    from mgpu.server.state import ClusterState
    from mgpu.server.stats import SchedulingStats

# Seconds. Queue waits run from an instant to days; passes and commits are milliseconds.
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600,
                      12 * 3600, 86400, 3 * 86400)
PASS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0)


class MasterMetrics:
    """One master's metrics: its registry, what events update, what scrapes read."""

    def __init__(self, cfg: MasterConfig, state: ClusterState,
                 scheduling: SchedulingStats) -> None:
        """Reads the metrics token now (a :class:`ConfigError` if its file is unreadable or
        open to others), so a master that cannot check scrapes does not start."""
        self.token = metrics_token(cfg.metrics_token, cfg.metrics_token_file)
        self.state = state
        self.scheduling = scheduling
        self.registry = registry = CollectorRegistry()
        self.submitted = Counter("mgpu_jobs_submitted", "Jobs accepted (saved) by the master",
                                 registry=registry)
        ended = Counter("mgpu_jobs_ended", "Jobs that ended, by outcome (their end state)",
                        ["state"], registry=registry)
        self._ended = {s: ended.labels(s.value) for s in ENDED_STATES}  # all shown, from 0
        self.queue_wait = Histogram(
            "mgpu_job_queue_wait_seconds",
            "From a job's submission to its start on a node (each start: a requeued job's "
            "wait counts from its first submission)", buckets=QUEUE_WAIT_BUCKETS,
            registry=registry)
        self.pass_seconds = Histogram(
            "mgpu_scheduling_pass_seconds",
            "Scheduling passes with jobs pending: how long each took (on the event loop)",
            buckets=PASS_BUCKETS, registry=registry)
        self.commit_seconds = Histogram(
            "mgpu_store_commit_seconds",
            "Group commits of the master's database: one SQLite transaction each",
            buckets=COMMIT_BUCKETS, registry=registry)
        registry.register(StateCollector(state))
        # The library's handler: content negotiation (text or OpenMetrics), compression.
        self.handler = make_aiohttp_handler(registry)

    def scheduling_pass(self, seconds: float, pending: int) -> None:
        """A scheduling pass over ``pending`` jobs took ``seconds`` (``/api/v1/stats`` too)."""
        self.scheduling.record(seconds, pending)
        self.pass_seconds.observe(seconds)

    def counting(self, on_saved: Callable[[Effects], None]) -> Callable[[Effects], None]:
        """``on_saved`` (the committer's callback), then :meth:`saved`."""

        def saved(effects: Effects) -> None:
            on_saved(effects)
            self.saved(effects)

        return saved

    def saved(self, effects: Effects) -> None:
        """Count what a group of effects did, once it is saved and sent: its submissions,
        its ends, the queue wait of the jobs it started (a start undone after the save,
        because the node had left, is not one)."""
        if effects.batch.inserts:
            self.submitted.inc(len(effects.batch.inserts))
        jobs = self.state.jobs
        for job_id in effects.ended:
            job = jobs.get(job_id)
            if job is not None and job.state in self._ended:
                self._ended[job.state].inc()
        for node_id, msg in effects.sends:
            if not isinstance(msg, m.StartJob):
                continue
            job = jobs.get(msg.job_id)
            if (job is not None and job.state is JobState.RUNNING and job.node == node_id
                    and job.started_at is not None and job.submitted_at is not None):
                wait = (job.started_at - job.submitted_at).total_seconds()
                self.queue_wait.observe(max(0.0, wait))


class StateCollector:
    """The gauges, read from the cluster state at each scrape (on the event loop)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("mgpu_master_info", "The master's version", labels=["version"])
        info.add_metric([VERSION], 1)
        yield info
        jobs = GaugeMetricFamily(
            "mgpu_jobs", "Jobs the master holds, by state and user (ended ones until pruned)",
            labels=["state", "user"])
        # (the state itself, not its .value, in the walk: 2.5 times faster at 100,000 jobs)
        by_state_user = Tally((j.state, j.user) for j in self.state.jobs.values())
        for (state, user), n in sorted(by_state_user.items()):
            jobs.add_metric([state.value, user], n)
        yield jobs
        nodes = GaugeMetricFamily("mgpu_nodes", "Nodes by state", labels=["state"])
        by_state = Tally(n.state for n in self.state.nodes.values())
        for s in NodeState:
            nodes.add_metric([s.value], by_state[s])
        yield nodes
        total = GaugeMetricFamily("mgpu_gpus", "GPUs of each node not down", labels=["node"])
        used = GaugeMetricFamily("mgpu_gpus_used", "GPUs held by mgpu jobs", labels=["node"])
        busy = GaugeMetricFamily("mgpu_gpus_busy_outside",
                                 "GPUs in use by processes mgpu did not start",
                                 labels=["node"])
        for node in sorted(self.state.nodes.values(), key=lambda n: n.node_id):
            if node.state is NodeState.DOWN:
                continue
            total.add_metric([node.node_id], len(node.gpus))
            used.add_metric([node.node_id], sum(g.job_id is not None for g in node.gpus))
            busy.add_metric([node.node_id], sum(busy_outside(g) for g in node.gpus))
        yield total
        yield used
        yield busy


def busy_outside(gpu: GpuInfo) -> bool:
    """Whether ``gpu`` is in use by processes mgpu did not start, by its node's last report
    (``GpuInfo.busy_outside``)."""
    return gpu.busy_outside
