"""Listing local sources: every file listed once and every file that cannot be labeled accounted
for (an error row or a named count), whatever the names, links, file kinds and manifest spellings."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from conftest import face_like, image_bytes
from fer_ray import label, runs, sources, storage
from fer_ray.errors import FerRayError

BAD_NAME = b"bad\xff.png"  # not UTF-8: os.fsdecode gives 'bad\udcff.png', which Arrow and JSON refuse


def _image(path, seed=1):
    with open(path, "wb") as f:
        f.write(image_bytes(face_like(seed)))


def _bad_name(folder) -> str:
    """A face crop whose name is not UTF-8 (created through a bytes path); its escaped path."""
    fd = os.open(os.path.join(os.fsencode(folder), BAD_NAME), os.O_CREAT | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(image_bytes(face_like(2)))
    return os.path.join(str(folder), "bad\\xff.png")


@contextlib.contextmanager
def _unreadable(monkeypatch, folder, contents_too=False):
    """`folder` cannot be listed (and, with `contents_too`, nothing in it stat'ed), as chmod 000
    does for anyone but root; tests may run as root, where it is simulated at os.scandir/os.stat."""
    folder = str(folder)
    if os.geteuid() != 0:
        os.chmod(folder, 0)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return

    def deny(real, inside):
        def call(path, *args, **kwargs):
            p = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if p == folder or (inside and p.startswith(folder + os.sep)):
                raise PermissionError(13, "Permission denied", p)
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "scandir", deny(os.scandir, False))
    if contents_too:
        monkeypatch.setattr(os, "stat", deny(os.stat, True))
    yield


@contextlib.contextmanager
def _deadline(seconds):
    """Fail instead of hanging: a listing that follows link loops never ends."""
    def stop(*_):
        raise TimeoutError(f"listing still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _rel(objs, root) -> list[str]:
    return [os.path.relpath(o.uri, root) for o in objs]


def test_a_name_that_is_not_utf8_is_listed_escaped(tmp_path):
    _image(tmp_path / "ok.png")
    escaped = _bad_name(tmp_path)
    os.mkdir(os.path.join(os.fsencode(tmp_path), b"dir\xfe"))
    _image(os.path.join(os.fsencode(tmp_path), b"dir\xfe", b"in.png"))
    got = storage.list_objects(str(tmp_path))
    assert _rel(got, tmp_path) == ["bad\\xff.png", "dir\\xfe/in.png", "ok.png"]
    bad = got[0]
    assert bad.uri == escaped and bad.size == os.stat(os.path.join(os.fsencode(tmp_path), BAD_NAME)).st_size
    assert bad.etag  # a real version: an incremental re-run does not list it as new
    pa.array([o.uri for o in got], pa.string())  # what failed the whole run
    json.dumps([o.uri for o in got], ensure_ascii=False).encode("utf-8")


def test_folder_links_are_followed_once_and_loops_end(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "a").mkdir(parents=True)
    out.mkdir()
    _image(src / "top.jpg")
    _image(src / "a" / "x.jpg")
    _image(out / "o.jpg")
    os.symlink(".", src / "loop")  # every file was listed ~40 times
    os.symlink(".", src / "loop2")  # two: 2^40 paths, a listing that never ended
    os.symlink("..", src / "a" / "up")
    os.symlink("a", src / "z")  # a real folder: listed under its own path, not the link's
    os.symlink("../out", src / "e2")  # one folder outside through two links: the first by name
    os.symlink("../out", src / "e1")
    with _deadline(20):
        got = storage.list_objects(str(src))
    assert _rel(got, src) == ["a/x.jpg", "e1/o.jpg", "top.jpg"]


def test_fifos_devices_and_dangling_links_are_listed_and_unreadable_folders_counted(tmp_path, monkeypatch):
    _image(tmp_path / "ok.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.symlink("nowhere.jpg", tmp_path / "dangling.jpg")
    os.symlink("/dev/null", tmp_path / "null.jpg")
    os.symlink("self.jpg", tmp_path / "self.jpg")  # a link to itself: ELOOP
    (tmp_path / "locked").mkdir()
    _image(tmp_path / "locked" / "hidden.jpg")
    skipped = collections.Counter()
    with _unreadable(monkeypatch, tmp_path / "locked"):
        got = {os.path.basename(o.uri): o for o in sources.list_source(str(tmp_path), skipped)}
    assert sorted(got) == ["dangling.jpg", "null.jpg", "ok.jpg", "pipe.jpg", "self.jpg"]
    assert (got["dangling.jpg"].size, got["dangling.jpg"].etag) == (-1, "")
    assert got["pipe.jpg"].size == 0 and got["pipe.jpg"].etag
    assert skipped == {f"(unreadable folder) {tmp_path / 'locked'}": 1}


def test_an_unreadable_source_folder_is_an_error_not_an_empty_listing(tmp_path, monkeypatch):
    _image(tmp_path / "ok.jpg")
    with _unreadable(monkeypatch, tmp_path), pytest.raises(FerRayError, match="access denied"):
        sources.list_source(str(tmp_path))


def test_a_manifest_into_an_unreadable_folder_does_not_abort(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    _image(tmp_path / "locked" / "a.jpg")
    _image(tmp_path / "ok.jpg")
    (tmp_path / "m.txt").write_text("locked/a.jpg\nlocked\nok.jpg\n")
    with _unreadable(monkeypatch, tmp_path / "locked", contents_too=True):
        got = sources.list_source(str(tmp_path / "m.txt"))
    assert _rel(got, tmp_path) == ["locked", "locked/a.jpg", "ok.jpg"]
    assert got[1].size == -1 and got[2].size > 0  # its row says why when it is read


def test_one_file_spelled_many_ways_in_a_manifest_is_one_entry(tmp_path, monkeypatch):
    (tmp_path / "x").mkdir()
    (tmp_path / "m").mkdir()
    _image(tmp_path / "x" / "a.jpg")
    x = tmp_path / "x"
    spellings = [f"{x}/a.jpg", f"{x}/./a.jpg", f"{x}//a.jpg", "../x/a.jpg", f"file://{x}/../x/a.jpg"]
    (tmp_path / "m" / "list.txt").write_text("\n".join(spellings) + "\n")
    monkeypatch.chdir(tmp_path / "m")  # '../x' from the manifest's folder (and from here)
    got = sources.list_source("list.txt")
    assert got == storage.list_objects(str(x))  # the folder listing's URI, size and ETag
    assert got[0].size > 0 and got[0].etag


def test_a_run_over_awkward_files_succeeds_and_accounts_for_each(tmp_path, monkeypatch):
    src, dest = tmp_path / "src", str(tmp_path / "dest")
    (src / "locked").mkdir(parents=True)
    _image(src / "ok.png")
    escaped = _bad_name(src)
    os.mkfifo(src / "pipe.jpg")
    os.symlink("nowhere.jpg", src / "dangling.jpg")
    os.symlink(".", src / "loop")
    _image(src / "locked" / "hidden.jpg")
    with _unreadable(monkeypatch, src / "locked"):
        first = label.run(str(src), dest, faces="crop", progress=False, echo=lambda m: None)
        again = label.run(str(src), dest, faces="crop", incremental=True, progress=False, echo=lambda m: None)
    rows = {r["image_path"]: r for r in pads.dataset(runs.committed_files(dest), format="parquet").to_table().to_pylist()}
    assert first["objects"] == len(rows) == 4
    assert rows[str(src / "ok.png")]["error"] is None
    assert rows[escaped]["error"] is None and rows[escaped]["label"]  # read by its own name, labelled
    assert rows[str(src / "pipe.jpg")]["error"] == "not a regular file"
    assert rows[str(src / "dangling.jpg")]["error"] == "not found"
    assert first["not_images"] == {f"(unreadable folder) {src / 'locked'}": 1}
    assert again["objects"] == 0 and again["objects_skipped"] == 4  # nothing relabeled
