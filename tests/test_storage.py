"""The one storage layer behaves the same on local disk and on the S3 server."""

import os

import pytest

from fer_ray import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


def test_files_json_folders_and_removal(root, tmp_path):
    doc = storage.join(root, "a", "doc.json")
    assert not storage.exists(doc) and storage.read_json(doc) is None
    storage.write_json(doc, {"n": 1})
    assert storage.exists(doc) and storage.read_json(doc) == {"n": 1}
    storage.write_bytes(doc, b"[1, 2]")  # JSON, but not an object
    assert storage.read_json(doc) is None and storage.read_bytes(doc) == b"[1, 2]"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing"))

    local = tmp_path / "folder"
    (local / "sub").mkdir(parents=True)
    (local / "x.bin").write_bytes(b"x")
    (local / "sub" / "y.bin").write_bytes(b"yy")
    storage.put_folder(str(local), storage.join(root, "copy"))
    assert storage.read_bytes(storage.join(root, "copy", "sub", "y.bin")) == b"yy"
    assert storage.ls_names(storage.join(root, "copy")) == ["sub", "x.bin"]
    storage.remove(storage.join(root, "copy"))
    storage.remove(storage.join(root, "copy"))  # twice: nothing there is fine
    assert storage.ls_names(storage.join(root, "copy")) == [] and storage.exists(doc)
    if not storage.is_s3(root):  # whole-or-nothing writes leave no temporary files behind
        assert os.listdir(os.path.dirname(doc)) == ["doc.json"]


def test_one_etag_rule_for_listings(root):
    storage.write_bytes(storage.join(root, "img.png"), b"png")
    storage.write_bytes(storage.join(root, "notes.txt"), b"txt")
    (o,) = storage.list_objects(root)
    assert o.uri == storage.join(root, "img.png") and o.size == 3 and o.etag and '"' not in o.etag
    storage.write_bytes(o.uri, b"png2")
    assert storage.list_objects(root)[0].etag != o.etag  # replaced content, new version


def test_the_arrow_filesystem_is_built_once_per_endpoint(bucket):
    assert storage.arrow_filesystem(bucket + "/a")[0] is storage.arrow_filesystem(bucket + "/b")[0]


def test_conditional_writes_for_a_lease(root):
    """create_if_absent and replace_if_unchanged: what runs.Lease is built on, the same on disk and S3."""
    uri = storage.join(root, "sub", "lease.json")
    assert storage.read_versioned(uri) == (None, None)
    assert storage.create_if_absent(uri, b"one") is True
    assert storage.create_if_absent(uri, b"two") is False  # someone holds it: unchanged
    data, v1 = storage.read_versioned(uri)
    assert data == b"one" and v1
    assert storage.replace_if_unchanged(uri, b"three", v1) is True
    data, v2 = storage.read_versioned(uri)
    assert data == b"three" and v2 != v1
    assert storage.replace_if_unchanged(uri, b"four", v1) is False  # stale version: another won
    assert storage.read_versioned(uri)[0] == b"three"
    storage.remove(uri)
    assert storage.replace_if_unchanged(uri, b"five", v2) is False  # gone: nothing to replace
    assert storage.read_versioned(uri) == (None, None)
    if not storage.is_s3(root):
        assert not [n for n in os.listdir(os.path.dirname(uri)) if ".tmp-" in n]  # nothing left aside
