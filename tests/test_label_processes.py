"""`fer-ray label` as real processes against one local DEST: two runs at once (the lease lets one
through), and a run killed after its commit marker but before its staging was removed.

Nothing here synchronises by sleeping: the children report where they are (a line on a pipe, a
file), block where the test wants them (reading their stdin), and every wait has a deadline."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from conftest import child_stderr, env_without_cluster, fer_ray_command, read_lease, wait_for
from fer_ray import query, runs
from test_label import _images, _read, _save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--faces", "crop", "--no-progress", "--no-ray"]  # a dozen crops: in the command's own process
DEADLINE = 120.0  # seconds any one wait may take before the test fails (a run takes ~3 s)


def _env() -> dict:
    return env_without_cluster(PYTHONUNBUFFERED="1")  # no cluster: label in-process


def _readline(proc: subprocess.Popen, timeout: float = DEADLINE) -> str:
    """The child's next stdout line, waiting on the pipe itself (with a deadline)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from the child in {timeout:.0f} s"
    line = proc.stdout.readline()
    assert line, f"the child closed stdout (exit {proc.wait(timeout)}): {child_stderr(proc)}"
    return line.strip()


def _end(*procs: subprocess.Popen | None) -> None:
    """Kill the children that are still running (this test's own, by their Popen) and reap them."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait(timeout=DEADLINE)


def _label(src, dest, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*fer_ray_command(), "label", str(src), str(dest), *FLAGS, *extra], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _rows(dest) -> list[dict]:
    """Every committed row: only files listed by the markers."""
    return _read(str(dest)).to_pylist()


def _paths_of(rows, run_id) -> list[str]:
    return sorted(r["image_path"] for r in rows if r["run_id"] == run_id)


def _check_markers(dest) -> list[dict]:
    """The committed markers, each naming files under its own run_id= folder that exist, no file
    listed twice, no run id twice."""
    markers = runs.committed_runs(str(dest))
    ids = [m["run_id"] for m in markers]
    assert len(ids) == len(set(ids)), ids
    files = [f for m in markers for f in m["files"]]
    assert len(files) == len(set(files)), files
    for m in markers:
        for f in m["files"]:
            assert f.startswith(f"{runs.RUN_PREFIX}{m['run_id']}/") and os.path.isfile(os.path.join(str(dest), f)), f
    return markers


# ------------------------------------------------------------------------- two runs at once

# The first run, paused deterministically: `fer-ray label` whose first write of labeled rows into
# staging announces itself on stdout ("PAUSED <run id>") and then blocks reading stdin until the
# test lets it go. It holds DEST's lease all the while (the lease is taken before any labeling).
PAUSED = r"""
import sys
from fer_ray import cli, runs

write = runs.StagingWriter.write
paused = []

def write_when_released(self, table):
    if not paused:
        paused.append(1)
        print("PAUSED", self.run_id, flush=True)
        sys.stdin.readline()  # the test writes a line (or closes the pipe) to let the run go on
    write(self, table)

runs.StagingWriter.write = write_when_released
sys.exit(cli.main(["label", *sys.argv[1:]]))
"""


def test_two_concurrent_label_processes_commit_once_and_the_other_exits_in_one_line(tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    images = _save(src, _images(0, 12))
    first = second = None
    try:
        first = subprocess.Popen([sys.executable, "-c", PAUSED, str(src), str(dest), *FLAGS], env=_env(), cwd=ROOT,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(dest / runs.LEASE_FILE), "the first run's lease file", DEADLINE, first)
        line = _readline(first)  # and wait until it is inside its run, between labeling and staging
        assert line.startswith("PAUSED "), line
        first_id = line.split()[1]
        held = read_lease(dest)
        assert held and held["owner"].split(":")[1] == str(first.pid), held
        staged_info = (dest / runs.STAGING_DIR / first_id / runs.IN_PROGRESS).read_text()

        second = subprocess.Popen([*fer_ray_command(), "label", str(src), str(dest), *FLAGS], env=_env(), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = second.communicate(timeout=DEADLINE)
        assert second.returncode == 1, (second.returncode, out, err)
        lines = _error_lines(err)
        assert len(lines) == 1, err
        assert lines[0].startswith(f"error: {dest} is being labeled by another run"), lines[0]
        assert f":{first.pid}:" in lines[0], lines[0]  # the first run's lease, by its owner
        assert "Traceback" not in err and out == ""

        # The second touched nothing: the first is still running, its lease and staging are its own,
        # nothing is committed, no other staging folder was made.
        assert first.poll() is None, child_stderr(first)
        assert read_lease(dest)["owner"] == held["owner"]
        assert os.listdir(dest / runs.STAGING_DIR) == [first_id]
        assert (dest / runs.STAGING_DIR / first_id / runs.IN_PROGRESS).read_text() == staged_info
        assert runs.committed_runs(str(dest)) == []

        first.stdin.write("go\n")
        first.stdin.close()
        first.wait(timeout=DEADLINE)  # its output is a few lines: no pipe fills up meanwhile
        out, err = first.stdout.read(), first.stderr.read()
        assert first.returncode == 0, err[-3000:]
        assert f"run {first_id}  committed" in out
    finally:
        _end(first, second)

    (m,) = _check_markers(dest)
    assert m["run_id"] == first_id and m["objects"] == 12 and m["rows"] == 12
    assert read_lease(dest) is None  # released at the end of the run

    third = _label(src, dest, "--incremental")
    assert third.returncode == 0, third.stderr[-3000:]
    markers = _check_markers(dest)
    assert [x["run_id"] for x in markers][0] == first_id and len(markers) == 2
    assert (markers[1]["objects"], markers[1]["objects_skipped"], markers[1]["rows"]) == (0, 12, 0)
    assert "12 already labeled, 0 labeled in this run" in third.stdout

    rows = _rows(dest)
    assert sorted(r["image_path"] for r in rows) == sorted(images)  # every image exactly once
    assert {r["run_id"] for r in rows} == {first_id} and all(r["face_index"] == 0 for r in rows)


# ------------------------------------------------------------------------- killed after the marker

# `fer-ray label` that dies by SIGKILL inside runs.commit, after the commit marker was written and
# when it is about to remove the run's staging folder: no `finally`, no lease release.
KILLED_AFTER_MARKER = r"""
import os, signal, sys
from fer_ray import cli, runs

commit, rm = runs.commit, runs.Dest.rm
committing = []

def commit_noting(d, run_id, marker):
    committing.append(run_id)
    return commit(d, run_id, marker)

def rm_or_die(self, path):
    if committing and path == self.staging(committing[-1]) and os.path.exists(self.marker(committing[-1])):
        print("KILLED", committing[-1], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    rm(self, path)

runs.commit, runs.Dest.rm = commit_noting, rm_or_die
sys.exit(cli.main(["label", *sys.argv[1:]]))
"""


def test_a_run_killed_between_its_marker_and_its_staging_removal_is_committed_once(tmp_path):
    src, dest = tmp_path / "in", tmp_path / "out"
    images = _save(src, _images(0, 12))
    killed = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_MARKER, str(src), str(dest), *FLAGS,
                               "--lease-seconds", "600"], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = killed.communicate(timeout=DEADLINE)
    finally:
        _end(killed)  # reaped: a zombie would still count as a live lease holder
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, err[-3000:])
    (line,) = [x for x in out.splitlines() if x.startswith("KILLED ")]
    run1 = line.split()[1]

    # Where it died: marker written, staging left, lease left (its holder gone, far from expiry).
    assert (dest / runs.RUNS_DIR / f"{run1}.json").is_file()
    assert (dest / runs.STAGING_DIR / run1 / runs.IN_PROGRESS).is_file()
    left = read_lease(dest)
    assert left and left["owner"].split(":")[1] == str(killed.pid)
    assert left["expires"] - time.time() > 500  # the next run must not be waiting for this

    # Readers see the killed run, committed, whole.
    (m1,) = _check_markers(dest)
    assert m1["run_id"] == run1 and m1["objects"] == 12 and m1["rows"] == 12
    rows = _rows(dest)
    assert sorted(r["image_path"] for r in rows) == sorted(images)
    assert {r["run_id"] for r in rows} == {run1}
    n_by_run = query.sql(str(dest), "SELECT run_id, count(*) AS n, count(DISTINCT image_path) AS d "
                                    "FROM labels GROUP BY run_id", arrow=True).to_pylist()
    assert n_by_run == [{"run_id": run1, "n": 12, "d": 12}]

    # The next plain run starts at once (the dead holder's lease is taken over), cleans the
    # leftover staging instead of resuming it, and commits a run of its own.
    t0 = time.monotonic()
    again = _label(src, dest)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "being labeled by another run" not in again.stderr
    assert time.monotonic() - t0 < 300  # far less than the 600 s lease: it was not waited out
    assert not (dest / runs.STAGING_DIR).exists()  # the killed run's leftover is gone, nothing else left
    assert read_lease(dest) is None
    markers = _check_markers(dest)
    assert len(markers) == 2, [m["run_id"] for m in markers]  # not the killed run committed over again
    m1_again, m2 = markers
    assert m1_again == m1  # the killed run is committed once, its marker untouched
    assert m2["run_id"] != run1 and m2["objects"] == 12 and m2["resumed_objects"] == 0
    rows = _rows(dest)
    assert _paths_of(rows, run1) == sorted(images)  # each run holds every image once: nothing moved
    assert _paths_of(rows, m2["run_id"]) == sorted(images)  # between runs, nothing twice in one
    assert len(rows) == 24

    # Incremental from here: only what is new since is labeled, once.
    new = _save(src, _images(12, 3))
    inc = _label(src, dest, "--incremental")
    assert inc.returncode == 0, inc.stderr[-3000:]
    *_, m3 = _check_markers(dest)
    assert (m3["objects"], m3["objects_skipped"]) == (3, 12)
    rows = _rows(dest)
    assert _paths_of(rows, m3["run_id"]) == sorted(new)
    assert len(rows) == 27 and len({(r["run_id"], r["image_path"]) for r in rows}) == 27
    assert {r["image_path"] for r in rows} == images | new
