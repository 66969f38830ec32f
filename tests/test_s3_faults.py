"""S3 writes that the server APPLIED but whose reply never reached the client (the proxy drops the
connection after the server answered 2xx: tests/s3faults.py `lose_reply`), and S3 faults on the
Ray path (the actors' GETs through the fault proxy).

A client retries a request whose reply it lost, so the server sees the same write twice: a
server-side copy, a CompleteMultipartUpload, the commit marker, the lease's conditional PUT. What
must hold: a run either commits with every object exactly once, or fails with one line that is
true, and the next run commits every object exactly once -- never a duplicated or lost row, never
a marker listing a missing file, never a run locked out by its own lease.
"""

from __future__ import annotations

import json
import time

import pytest
import s3faults
import s3fs
from conftest import expire_lease, read_lease
from test_label import _check_rows, _images, _once, _put, _read

from fer_ray import cli, label, runs, storage

ARGV = ["--faces", "crop", "--batch-size", "20", "--no-ray", "--no-progress"]
N = 40  # objects per run; ROWS_PER_FILE 20 below: two part files, so two copies at commit


def _fates(proxy, match) -> list[str]:
    return [f.split()[0] for f in proxy.matched(match)]


def _committed_exactly_once(src: str, dest: str) -> None:
    """Every listed object has exactly one row across DEST's committed runs, every file a marker
    lists exists (the read would fail otherwise) and holds the fixed schema, each marker's counts
    match its rows, and no committed run leaves staging behind."""
    t = _read(dest)
    _once(t, storage.list_objects(src))
    fs, root = storage.filesystem(dest)
    for m in runs.committed_runs(dest):
        assert m["files"] and all(fs.exists(f"{root}/{f}") for f in m["files"]), m["files"]
        _check_rows(t.filter(_is(t, "run_id", m["run_id"])), m)
        listed = sorted(f"{root}/{f}" for f in m["files"])
        assert sorted(fs.find(f"{root}/{runs.RUN_PREFIX}{m['run_id']}")) == listed  # nothing unlisted beside them


def _is(t, column, value):
    import pyarrow.compute as pc

    return pc.equal(t.column(column), value)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: run "), err
    return err[-1]


# ------------------------------------------------------------------ replies lost once: retried


def test_a_reply_lost_once_at_every_write_of_a_run_still_commits_each_object_once(faulty_s3, bucket, monkeypatch):
    """One reply lost at each kind of write a run makes after labeling: an UploadPart and a
    CompleteMultipartUpload of a part file, a server-side copy at commit, the marker PUT. Each is
    applied, its reply lost, and retried by its client (pyarrow, s3fs/botocore): the run commits."""
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, N))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    steps = [s3faults.part_upload, s3faults.complete_multipart, s3faults.server_side_copy, s3faults.marker_put]
    for step in steps:
        faulty_s3.lose_reply(step, times=1)
    m = label.run(src, dest, faces="crop", batch_size=20, ray=False, progress=False)
    assert faulty_s3.counts["lost_reply"] == len(steps), faulty_s3.counts
    for step in steps:  # each write was applied, its reply lost, then sent again and answered
        fates = _fates(faulty_s3, step)
        assert fates[:2] == ["lost_reply", "forwarded"], (step.__name__, fates)
    assert [r["run_id"] for r in runs.committed_runs(dest)] == [m["run_id"]]
    assert len(m["files"]) == 2
    _committed_exactly_once(src, dest)
    assert storage.ls_names(f"{dest}/{runs.STAGING_DIR}") == []  # committed: staging dropped


# ------------------------------------------------------------------ replies lost at every retry

def _outage_after_marker(proxy):
    """The store fails (503 on everything) from the moment the marker is written."""
    proxy.outage_after = lambda method, path, query: s3faults.marker_put(s3faults.Request(method, path, query, {}))


@pytest.mark.parametrize("step", [
    "server_side_copy",
    "complete_multipart",
])
def test_a_write_applied_but_never_acknowledged_fails_in_one_true_line_and_the_next_run_commits_once(
        faulty_s3, bucket, monkeypatch, capsys, step):
    """Every retry of one kind of write is applied and its reply lost (or the store goes down just
    after the marker): the client gives up. The run must fail in one line that tells the truth --
    'nothing committed' only when there is no marker -- and a plain re-run (the one the line asks
    for) commits every object exactly once."""
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, N))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    monkeypatch.setattr(storage, "RETRIES", 2)  # give up quickly: botocore and pyarrow
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # and s3fs's own loop around botocore
    faulty_s3.lose_reply(getattr(s3faults, step), times=None)
    assert cli.main(["label", f"{src}", dest, *ARGV]) == 1
    err = _one_line_error(capsys)
    assert faulty_s3.counts["lost_reply"] >= 2, faulty_s3.counts  # applied and unacknowledged, retried
    faulty_s3.clear()
    faulty_s3.set(0.0)
    if "nothing committed" in err:
        committed = [m["run_id"] for m in runs.committed_runs(dest)]
        assert committed == [], f"{err!r}, yet committed: {committed}"
    expire_lease(dest, missing_ok=True)  # released, or (an outage) left to expire
    m = label.run(src, dest, faces="crop", batch_size=20, ray=False, progress=False)
    if step == "complete_multipart":  # the completed part was kept: resumed, not labeled again
        assert m["resumed_objects"] == 20
    _committed_exactly_once(src, dest)


@pytest.mark.parametrize("fault", ["marker_reply_lost", "outage_after_marker"])
def test_a_run_whose_marker_landed_is_committed_whatever_fails_after(faulty_s3, bucket, monkeypatch, capsys, fault):
    """The marker PUT applied but every reply lost (the client gives up), or the store down from
    the moment the marker is written (staging cleanup and lease release fail): the marker is what
    commits a run, so the run is committed and says so, once; what it left in staging, the next
    run removes, and an incremental run then labels nothing again."""
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, N))
    monkeypatch.setattr(runs, "ROWS_PER_FILE", 20)
    monkeypatch.setattr(storage, "RETRIES", 2)
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    if fault == "outage_after_marker":
        _outage_after_marker(faulty_s3)
    else:
        faulty_s3.lose_reply(s3faults.marker_put, times=None)
    assert cli.main(["label", src, dest, *ARGV]) == 0, capsys.readouterr().err
    assert "committed" in capsys.readouterr().out
    if fault == "marker_reply_lost":
        assert faulty_s3.counts["lost_reply"] >= 2, faulty_s3.counts
    faulty_s3.clear()
    faulty_s3.set(0.0)
    _committed_exactly_once(src, dest)
    expire_lease(dest, missing_ok=True)  # released, or (an outage) left to expire
    again = label.run(src, dest, faces="crop", batch_size=20, ray=False, progress=False, incremental=True)
    assert again["objects"] == 0 and len(runs.committed_runs(dest)) == 2
    _once(_read(dest), storage.list_objects(src))  # still every object once
    assert storage.ls_names(f"{dest}/{runs.STAGING_DIR}") == []


# ------------------------------------------------------------------ the lease

def test_a_lease_taken_whose_reply_was_lost_is_ours(faulty_s3, bucket):
    dest = f"{bucket}/out"
    lease = runs.Lease(runs.Dest(dest), ttl=30, run="me")
    faulty_s3.lose_reply(s3faults.lease_create, times=1)
    try:
        lease.acquire()
    finally:
        assert _fates(faulty_s3, s3faults.lease_create)[:2] == ["lost_reply", "forwarded"]  # 412 on the retry
    assert read_lease(dest)["owner"] == lease.owner
    lease.release()
    assert read_lease(dest) is None


def test_an_expired_lease_taken_over_whose_reply_was_lost_is_ours(faulty_s3, bucket):
    dest = f"{bucket}/out"
    storage.write_bytes(f"{dest}/{runs.LEASE_FILE}", json.dumps(
        {"owner": "elsewhere:1:dead", "run": "crashed", "expires": time.time() - 1}).encode())
    lease = runs.Lease(runs.Dest(dest), ttl=30, run="me")
    faulty_s3.lose_reply(s3faults.lease_replace, times=1)
    try:
        lease.acquire()
    finally:
        assert _fates(faulty_s3, s3faults.lease_replace)[:1] == ["lost_reply"]
    assert read_lease(dest)["owner"] == lease.owner
    lease.release()


def test_a_run_whose_lease_reply_was_lost_labels_and_does_not_lock_dest(faulty_s3, bucket, capsys):
    """The lease's conditional PUT applied, its reply lost, the retry refused (412): the run knows
    its own lease, labels, and releases it for the next run."""
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, 6))
    faulty_s3.lose_reply(s3faults.lease_create, times=1)
    rc = cli.main(["label", src, dest, *ARGV, "--lease-seconds", "60"])
    err = capsys.readouterr().err.strip()
    assert rc == 0, err
    assert cli.main(["label", src, dest, *ARGV, "--lease-seconds", "60"]) == 0, capsys.readouterr().err
    assert read_lease(dest) is None


def test_a_renewal_whose_reply_was_lost_keeps_the_lease(faulty_s3, bucket):
    """Renewing is a PUT conditional on the last version read; a lost reply makes the retry fail its
    condition (the ETag changed: by this very write). The lease must not count as lost."""
    dest = f"{bucket}/out"
    lease = runs.Lease(runs.Dest(dest), ttl=3, run="me").acquire()  # renewed every second
    try:
        faulty_s3.lose_reply(s3faults.lease_replace, times=2)
        deadline = time.monotonic() + 10
        while _fates(faulty_s3, s3faults.lease_replace).count("forwarded") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert faulty_s3.counts["lost_reply"] == 2
        held = read_lease(dest)
        lease.check()  # not lost
        assert held["owner"] == lease.owner and held["expires"] > time.time()
    finally:
        lease.release()
    assert read_lease(dest) is None


# ------------------------------------------------------------------ the Ray path through the proxy


def test_ray_actors_fetch_through_the_faulty_proxy_and_retry_a_burst_of_faults(ray_local, faulty_s3, bucket,
                                                                               monkeypatch):
    """The shared local Ray's workers started with AWS_ENDPOINT_URL at the S3 server itself. With
    RAY_ADDRESS set (a job submitted to a cluster: here, that same Ray) label.build_dataset gives the
    actors the driver's AWS_* variables in their runtime_env, so they start pointed at the proxy.
    A burst of 503 SlowDown and dropped connections on the actors' GETs is retried: the run commits
    every object once, with no error row."""
    src, dest = f"{bucket}/in", f"{bucket}/out"
    _put(src, _images(0, N))
    monkeypatch.setenv("RAY_ADDRESS", ray_local.get_runtime_context().gcs_address)
    reads = s3faults.object_get(f"/{bucket.split('://')[1]}/in/")
    faulty_s3.fail(reads, "503", times=5)
    faulty_s3.fail(reads, "reset", times=2)
    m = label.run(src, dest, faces="crop", ray=True, workers=1, batch_size=20, progress=False)
    assert m["ray"] is True and m["error_rows"] == 0
    fates = _fates(faulty_s3, reads)
    assert (fates.count("503"), fates.count("reset")) == (5, 2), fates  # the actor's GETs met the burst
    got = {r.path for r, fate in faulty_s3.log if reads(r) and fate.startswith("forwarded 200")}
    assert len(got) == N  # every object was read through the proxy (the driver reads none)
    _committed_exactly_once(src, dest)
