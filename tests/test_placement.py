"""Where Ray work runs: the private local Ray that fer-ray starts."""

import ipaddress
import os


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_a_local_ray_listens_on_loopback_only(ray_local):
    """Every server of the Ray fer-ray starts on this machine (GCS, raylet, workers, agents,
    metrics) listens on 127.0.0.1: nothing of it is reachable from the network."""
    import psutil

    @ray_local.remote
    def pid():
        return os.getpid()

    worker = ray_local.get(pid.remote())
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    assert worker in ours  # the processes below are this Ray's, not some other one's
    listening = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len({name for *_, name in listening}) >= 3, listening  # GCS, raylet, workers at least
    assert [s for s in listening if not _loopback(s[0])] == []
