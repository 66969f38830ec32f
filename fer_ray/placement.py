"""What a Ray cluster can place: the one rule both jobs size their workers by."""

from __future__ import annotations


def largest_node_cpus(ray, default: float) -> float:
    """CPUs of the biggest live node: a worker or actor asking for more never gets scheduled and
    the job waits forever, so every per-worker share is capped by this."""
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=default)
