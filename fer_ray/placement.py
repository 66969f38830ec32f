"""Where fer-ray's Ray work runs: the cluster it joins or starts, and the one rule both jobs size
their workers by."""

from __future__ import annotations

import os

# Ray starts its workers at nice 15, which keeps a cluster's daemons responsive under load; on
# this machine's own Ray that left a labeling run's actors ~5 % of the cores beside any other busy
# process (10x slower than at nice 0: docs/benchmarks.md). At nice 0 they get their fair share,
# as the command's own process does.
LOCAL_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}
# Ray's switch for a single-machine Ray: with it off, the node's address is the loopback one, and
# every server a local start opens (GCS, raylet, workers' gRPC, agents, metrics) listens on
# 127.0.0.1 only. On by default on Linux, when they all listen on every interface, metrics
# without authentication among them.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init(ray, env: dict | None = None, dashboard: bool = False, **kwargs) -> None:
    """Join the cluster at RAY_ADDRESS (set by `ray job submit`, or `auto` for a running one), or
    start a private local Ray, never some other cluster that happens to run on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        start_local(ray, env, dashboard, **kwargs)


def start_local(ray, env: dict | None = None, dashboard: bool = False, **kwargs) -> None:
    """A private local Ray, its workers at the caller's priority. `env`: variables its own
    processes read when they start (set here unless already set). `dashboard`: it serves Ray's
    state API too, which Ray Train's clean-up actor asks about the run every few seconds."""
    for key, value in (env or {}).items():
        os.environ.setdefault(key, value)
    _loopback_only()
    ray.init(address="local", include_dashboard=dashboard, runtime_env=LOCAL_RUNTIME_ENV, **kwargs)


def _loopback_only() -> None:
    """This machine's own Ray listens on 127.0.0.1 only, unless CLUSTER_SWITCH says otherwise.
    Ray reads the switch when it is imported, so this process's copy is set too; its own
    processes read it from the environment."""
    from ray._private import ray_constants

    os.environ.setdefault(CLUSTER_SWITCH, "0")
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(CLUSTER_SWITCH, True)


def largest_node_cpus(ray, default: float) -> float:
    """CPUs of the biggest live node: a worker or actor asking for more never gets scheduled and
    the job waits forever, so every per-worker share is capped by this."""
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=default)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), which a container may set below the
    machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
