"""Run bookkeeping: ids, staging, commit markers, what readers and incremental runs see."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import expire_lease
from fer_ray import runs
from fer_ray.schema import LABEL_SCHEMA


def _rows(paths, run_id="r"):
    n = len(paths)
    cols = {f.name: pa.nulls(n, f.type) for f in LABEL_SCHEMA}
    cols.update(
        image_path=pa.array(paths, pa.string()),
        face_index=pa.array([0] * n, pa.int32()),
        object_etag=pa.array(["e"] * n, pa.string()),
        object_size=pa.array([10] * n, pa.int64()),
        model_id=pa.array(["m"] * n, pa.string()),
        run_id=pa.array([run_id] * n, pa.string()),
        labeled_at=pa.array([0] * n, pa.timestamp("us", tz="UTC")),
    )
    return pa.Table.from_pydict(cols, schema=LABEL_SCHEMA)


def _stage(d, run_id, parts):
    os.makedirs(d.staging(run_id), exist_ok=True)
    for i, paths in enumerate(parts):
        pq.write_table(_rows(paths, run_id), d.path(runs.STAGING_DIR, run_id, runs.part_name(i)))


def test_run_ids_sort_by_time_and_are_checked():
    import datetime as dt

    a = runs.new_run_id(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    b = runs.new_run_id(dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    assert a < b and a.startswith("20260101T000000Z-")
    assert runs.check_run_id("nightly-2026.01") == "nightly-2026.01"
    for bad in ("", "../x", "a/b", "_hidden", "a b"):
        with pytest.raises(ValueError):
            runs.check_run_id(bad)


def test_commit_makes_a_run_visible_only_with_its_marker(tmp_path):
    dest = str(tmp_path / "out")
    d = runs.Dest(dest)
    assert runs.committed_runs(dest) == [] and runs.committed_files(dest) == []
    run_id, parts = runs.open_run(d, {"source": "s"})
    assert parts == [] and os.path.isfile(d.path(runs.STAGING_DIR, run_id, runs.IN_PROGRESS))
    _stage(d, run_id, [["a", "b"], ["c"]])
    assert runs.committed_files(dest) == []  # staged is not committed
    marker = runs.commit(d, run_id, {"objects": 3})
    files = runs.committed_files(dest)
    assert [os.path.basename(f) for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(f.startswith(os.path.join(dest, f"run_id={run_id}")) for f in files)
    assert marker["files"] == [f"run_id={run_id}/part-0000{i}.parquet" for i in range(2)]
    assert [m["run_id"] for m in runs.committed_runs(dest)] == [run_id]
    assert not os.path.exists(d.staging())
    assert runs.labeled_keys(dest) == {("a", "e", 10), ("b", "e", 10), ("c", "e", 10)}
    with open(d.marker(run_id)) as f:
        assert json.load(f)["objects"] == 3


def test_runs_are_ordered_and_filterable(tmp_path):
    dest = str(tmp_path)
    d = runs.Dest(dest)
    ids = []
    for n, t in enumerate(["2026-01-02T00:00:00", "2026-01-01T00:00:00"]):
        rid, _ = runs.open_run(d, {"run_id": f"r{n}"})
        _stage(d, rid, [[f"x{n}"]])
        runs.commit(d, rid, {"finished_at": t})
        ids.append(rid)
    assert [m["run_id"] for m in runs.committed_runs(dest)] == ["r1", "r0"]
    assert len(runs.committed_files(dest)) == 2
    assert runs.committed_files(dest, run_ids=["r0"]) == [os.path.join(dest, "run_id=r0", "part-00000.parquet")]
    with pytest.raises(ValueError, match="already committed"):
        runs.open_run(d, {"run_id": "r0"})


def test_crash_leftovers_are_removed_or_resumed(tmp_path):
    dest = str(tmp_path)
    d = runs.Dest(dest)
    # a run that crashed while copying: a run_id= folder with no marker, and its staging
    _stage(d, "dead", [["a"]])
    d.write_json(d.path(runs.STAGING_DIR, "dead", runs.IN_PROGRESS), {"source": "other"})
    os.makedirs(d.run_dir("dead"))
    pq.write_table(_rows(["a"]), os.path.join(d.run_dir("dead"), "part-00000.parquet"))
    # a run that crashed while labeling, resumable
    _stage(d, "live", [["b"], ["c"]])
    d.write_json(d.path(runs.STAGING_DIR, "live", runs.IN_PROGRESS), {"source": "s", "started_at": "t0"})
    rid, parts = runs.open_run(d, {"source": "s"}, resume_if=lambda prev, parts: prev["source"] == "s")
    assert rid == "live" and parts == ["part-00000.parquet", "part-00001.parquet"]
    assert not os.path.exists(d.run_dir("dead")) and not os.path.exists(d.staging("dead"))
    assert d.read_json(d.path(runs.STAGING_DIR, "live", runs.IN_PROGRESS))["started_at"] == "t0"
    runs.commit(d, rid, {})
    assert runs.labeled_keys(dest) == {("b", "e", 10), ("c", "e", 10)}
    # nothing resumable -> staging removed, a fresh id
    _stage(d, "old", [["z"]])
    rid2, parts2 = runs.open_run(d, {"source": "s"}, resume_if=lambda prev, parts: False)
    assert rid2 != "old" and parts2 == [] and not os.path.exists(d.staging("old"))


def test_committed_runs_on_s3(bucket):
    dest = f"{bucket}/labels"
    d = runs.Dest(dest)
    rid, _ = runs.open_run(d, {"source": "s"})
    d.fs.pipe_file(d.path(runs.STAGING_DIR, rid, "part-00000.parquet"), b"x")
    assert runs.committed_files(dest) == []
    runs.commit(d, rid, {})
    assert runs.committed_files(dest) == [f"{dest}/run_id={rid}/part-00000.parquet"]
    assert not d.fs.exists(d.staging(rid))


# ---------------------------------------------------------------- the lease: one writer per DEST


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("bucket") + "/out"


def test_only_one_of_many_concurrent_runs_takes_the_lease(dest):
    import threading

    barrier = threading.Barrier(6)
    won, refused = [], []

    def contend():
        lease = runs.Lease(runs.Dest(dest), ttl=60)
        barrier.wait()  # all try at once
        try:
            won.append(lease.acquire())
        except runs.LeaseHeld as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert all("is being labeled by another run" in m for m in refused)
    won[0].release()
    again = runs.Lease(runs.Dest(dest), ttl=60).acquire()  # released: free to take
    again.release()


def _stall(lease: runs.Lease) -> None:
    """The lease's process stops renewing it (crashed, or frozen), and a renewal already in flight
    has landed: from here on only the test writes the lease record."""
    lease._stop.set()
    with lease._renewing:
        pass


def _expire(lease: runs.Lease) -> None:
    held, _ = lease._read()
    assert held["owner"] == lease.owner
    expire_lease(lease.d.uri)


def test_a_crashed_runs_lease_expires_and_only_one_takes_it_over(dest):
    import threading

    crashed = runs.Lease(runs.Dest(dest), ttl=600, run="crashed").acquire()
    _stall(crashed)  # the process died: nobody renews or releases
    with pytest.raises(runs.LeaseHeld, match="crashed"):
        runs.Lease(runs.Dest(dest), ttl=60).acquire()
    _expire(crashed)
    barrier = threading.Barrier(4)
    won, refused = [], []

    def contend():
        lease = runs.Lease(runs.Dest(dest), ttl=60)
        barrier.wait()  # all find it expired at once
        try:
            won.append(lease.acquire())
        except runs.LeaseHeld as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3, (won, refused)
    assert won[0]._read()[0]["owner"] == won[0].owner
    won[0].release()


def test_a_stalled_run_that_lost_its_lease_does_not_commit(dest):
    """A run stalls past its lease (renewals stop), another takes the lease over; when the first
    wakes up, its renewal sees another owner and its commit is refused."""
    import time

    # The ttl only sets how often renewals run (ttl/3) once the run wakes up; the expiry is made.
    stalled = runs.Lease(runs.Dest(dest), ttl=3.0).acquire()
    _stall(stalled)
    stalled.check()  # not lost yet: the commit would go ahead
    _expire(stalled)
    other = runs.Lease(runs.Dest(dest), ttl=600).acquire()
    stalled._start_renewing()  # it wakes up
    deadline = time.monotonic() + 60
    while not stalled.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(runs.LeaseHeld, match="nothing committed"):
        stalled.check()
    stalled.release()  # must not remove the other run's lease
    assert other._read()[0]["owner"] == other.owner
    other.release()
    assert other._read() == (None, None)


def test_sigterm_releases_the_lease(tmp_path):
    """`kill PID` (SIGTERM) during a run: the lease is released on the way out, so the next run
    starts at once instead of waiting for it to expire."""
    import signal
    import subprocess
    import sys

    dest = str(tmp_path / "out")
    code = f"""
import sys, time
from fer_ray import runs
with runs.terminate_as_interrupt():
    lease = runs.Lease(runs.Dest({dest!r}), ttl=600).acquire()
    try:
        print("held", flush=True)
        time.sleep(120)
    finally:
        lease.release()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # waits on the child, not on a clock
    assert os.path.exists(os.path.join(dest, runs.LEASE_FILE))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not os.path.exists(os.path.join(dest, runs.LEASE_FILE))


def test_a_lease_whose_holder_died_on_this_host_is_taken_at_once(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = runs.Dest(str(tmp_path / "out"))
    os.makedirs(d.uri)
    with open(os.path.join(d.uri, runs.LEASE_FILE), "w") as f:  # SIGKILLed: never released
        json.dump({"owner": f"{socket.gethostname()}:{dead.pid}:abcd", "run": "r0", "expires": time.time() + 600}, f)
    with runs.Lease(d, ttl=60) as lease:
        held, _ = lease._read()
        assert held["owner"] == lease.owner
    # a live holder (this process, seen from another lease object) still blocks
    with runs.Lease(d, ttl=60):
        with pytest.raises(runs.LeaseHeld):
            runs.Lease(d, ttl=60).acquire()
