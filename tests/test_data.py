"""Data ingest (`fer-ray prepare`) on tiny generated FER-2013 sources: CSV and image folders."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tarfile

import numpy as np
import pytest

from conftest import face_like, image_bytes
from fer_ray import cli, data, ingest, preprocess, storage

BLACK = np.zeros((48, 48), np.uint8)


def px_text(img: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in img.reshape(-1))


def write_csv(path, rows, header="emotion,pixels,Usage", compress=False):
    text = header + "\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)
    return str(path)


def sample_rows():
    """12 data rows (0-based row numbers in comments), 5 of them bad, one of each kind."""
    good = [face_like(i) for i in range(8)]
    short = px_text(good[0]).rsplit(" ", 1)[0]
    nonnum = px_text(good[1]).replace(" ", " x7 ", 1)
    big = px_text(good[2]).replace(" ", " 300 ", 1).rsplit(" ", 1)[0]
    rows = [
        (0, px_text(good[0]), "Training"),     # 0
        (3, px_text(good[1]), "Training"),     # 1
        (3, short, "Training"),                # 2 bad: 2303 values
        (6, px_text(good[2]), "PublicTest"),   # 3
        (2, nonnum, "Training"),               # 4 bad: non-numeric
        (9, px_text(good[3]), "Training"),     # 5 bad: label 9
        (4, px_text(good[4]), "Validation"),   # 6 bad: split name
        (5, px_text(good[5]), "PrivateTest"),  # 7
        (1, big, "Training"),                  # 8 bad: value 300
        (4, px_text(good[6]), "Training"),     # 9
        (6, px_text(good[7]), "PrivateTest"),  # 10
    ]
    return rows, good


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("compress", [False, True])
def test_csv_bad_rows_are_listed_not_fatal(tmp_path, capsys, compress):
    rows, good = sample_rows()
    src = write_csv(tmp_path / ("fer.csv.gz" if compress else "fer.csv"), rows, compress=compress)
    with open(src, "ab") as f:  # a malformed line (extra field) as the last row, 11
        f.write((gzip.compress(b"3,1 2 3,Training,extra\n") if compress else b"3,1 2 3,Training,extra\n"))
    out_dir = str(tmp_path / "out")
    code, out, err = run_cli(["prepare", "--source", src, "--output", out_dir], capsys)
    assert code == 0, err
    assert "bad rows: 6" in out

    summary = json.loads(open(os.path.join(out_dir, "prepare.json")).read())
    reasons = {b["row"]: b["reason"] for b in summary["bad_rows"]}
    assert sorted(reasons) == [2, 4, 5, 6, 8, 11]
    assert "2303 pixel values, expected 2304" in reasons[2]
    assert "non-numeric pixel value 'x7'" in reasons[4]
    assert "label '9'" in reasons[5]
    assert "split 'Validation'" in reasons[6]
    assert "out of range" in reasons[8]
    assert "malformed line" in reasons[11]
    assert [b["line"] for b in summary["bad_rows"]] == [4, 6, 7, 8, 10, 13]  # header is line 1
    assert summary["source"]["rows"] == 12 and summary["source"]["valid_rows"] == 6
    assert summary["source"]["sha256"] == storage.sha256_file(src)
    assert summary["counts"]["Training"]["rows"] == 3
    assert summary["counts"]["Training"]["classes"]["happy"] == 1
    assert summary["checksum"] == data.checksum(out_dir)

    train = data.load_split(out_dir, "Training")
    assert list(train.source_rows) == [0, 1, 9] and list(train.labels) == [0, 3, 4]
    assert (train.pixels == np.stack([good[0], good[1], good[6]])).all()
    assert train.votes is None
    private = data.load_split(out_dir, "PrivateTest")
    assert list(private.source_rows) == [7, 10] and list(private.labels) == [5, 6]


def test_csv_other_column_order_and_tar_gz(tmp_path):
    img = face_like(3)
    csv_text = "emotion, Usage, pixels\n" + f"2,Training,{px_text(img)}\n1,PublicTest,{px_text(img)}\n"
    raw = csv_text.encode()
    archive = tmp_path / "fer2013.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("fer2013/fer2013.csv")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    s = ingest.prepare(str(archive), str(tmp_path / "out"))
    assert s["counts"]["Training"]["rows"] == 1 and s["counts"]["PublicTest"]["rows"] == 1
    assert s["leakage"]["PublicTest_in_Training"] == 1
    assert data.load_split(str(tmp_path / "out"), "PublicTest").in_training.tolist() == [True]


def defect_rows():
    a, b, c, d = (face_like(i) for i in (10, 11, 12, 13))
    grey = np.full((48, 48), 128, np.uint8)
    grey[0, :3] = 130
    return [
        (0, px_text(a), "Training"),     # 0  group A (labels agree)
        (1, px_text(b), "Training"),     # 1  group B (labels conflict)
        (0, px_text(a), "Training"),     # 2  A duplicate
        (2, px_text(b), "Training"),     # 3  B, other label
        (3, px_text(BLACK), "Training"), # 4  blank
        (3, px_text(grey), "Training"),  # 5  blank (near-constant grey)
        (4, px_text(c), "Training"),     # 6
        (0, px_text(a), "PublicTest"),   # 7  leaks A
        (1, px_text(b), "PrivateTest"),  # 8  leaks B
        (3, px_text(BLACK), "PublicTest"),  # 9 blank in a test split: flagged, never dropped
        (5, px_text(d), "PublicTest"),   # 10
        (5, px_text(d), "PrivateTest"),  # 11 PrivateTest also in PublicTest
    ]


def test_duplicates_blank_and_leakage_measured(tmp_path):
    src = write_csv(tmp_path / "fer.csv", defect_rows())
    s = ingest.prepare(src, str(tmp_path / "out"))
    assert s["blank"]["rows"] == 3 and s["blank"]["all_black"] == 2
    assert s["blank"]["source_rows"] == [4, 5, 9]
    dup = s["duplicates"]
    assert dup["unique_images"] == 6  # A, B, black, grey, C, D
    assert dup["groups"] == 4 and dup["conflicting_label_groups"] == 1  # A, B, black, D; B conflicts
    assert dup["training_groups"] == 2 and dup["training_conflicting_label_groups"] == 1
    assert s["leakage"] == {"PublicTest_in_Training": 2, "PrivateTest_in_Training": 1,
                            "PrivateTest_in_PublicTest": 1}
    assert s["dropped"]["total"] == 0 and s["counts"]["Training"]["rows"] == 7
    pub = data.load_split(str(tmp_path / "out"), "PublicTest")
    assert dict(zip(pub.source_rows.tolist(), pub.in_training.tolist())) == {7: True, 9: True, 10: False}
    assert not data.load_split(str(tmp_path / "out"), "Training").in_training.any()


def test_drop_duplicates_and_blank_touch_training_only(tmp_path, capsys):
    src = write_csv(tmp_path / "fer.csv", defect_rows())
    out_dir = str(tmp_path / "clean")
    code, out, _ = run_cli(["prepare", "--source", src, "--output", out_dir, "--drop-duplicates",
                            "--drop-blank"], capsys)
    assert code == 0
    s = data.read_summary(out_dir)
    assert s["dropped"] == {"blank": 2, "duplicate": 1, "conflicting_label": 2, "total": 5,
                            "source_rows": [1, 2, 3, 4, 5]}
    train = data.load_split(out_dir, "Training")
    assert train.source_rows.tolist() == [0, 6]  # first of A kept; B (conflicting) and blanks gone
    pub = data.load_split(out_dir, "PublicTest")
    priv = data.load_split(out_dir, "PrivateTest")
    assert len(pub) == 3 and len(priv) == 2  # test splits intact
    # in_training is against the written Training split: B and black are no longer in it
    assert dict(zip(pub.source_rows.tolist(), pub.in_training.tolist())) == {7: True, 9: False, 10: False}
    assert priv.in_training.tolist() == [False, False]
    assert s["leakage"]["PrivateTest_in_Training"] == 1  # the source's leakage is still reported
    assert "dropped from Training: 5" in out


def write_ferplus(path, n, special=None):
    """Rows of votes: row i gets i+1 votes for 'happiness' and 1 for 'anger' (so position shows)."""
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    lines = [header]
    for i in range(n):
        votes = [0, i + 1, 0, 0, 1, 0, 0, 0, 0, 0]
        if special and i in special:
            votes = special[i]
        lines.append(f"Training,fer{i:07d}.png," + ",".join(map(str, votes)))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_ferplus_votes_joined_by_position(tmp_path):
    rows, _ = sample_rows()
    src = write_csv(tmp_path / "fer.csv", rows)
    # row 1: only contempt/unknown/NF votes -> null; row 7: order check for every FER+ column
    fp = write_ferplus(tmp_path / "fernew.csv", len(rows),
                       special={1: [0, 0, 0, 0, 0, 0, 0, 3, 2, 5], 7: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]})
    out_dir = str(tmp_path / "out")
    s = ingest.prepare(src, out_dir, ferplus=fp)
    assert s["ferplus"]["rows_without_votes"] == 1 and s["ferplus"]["rows_with_votes"] == 5
    train = data.load_split(out_dir, "Training")  # source rows 0, 1, 9
    assert train.has_votes.tolist() == [True, False, True]
    # EMOTIONS order: angry, disgust, fear, happy, sad, surprise, neutral
    assert train.votes[0].tolist() == [1, 0, 0, 1, 0, 0, 0]
    assert train.votes[1].tolist() == [0] * 7
    assert train.votes[2].tolist() == [1, 0, 0, 10, 0, 0, 0]
    priv = data.load_split(out_dir, "PrivateTest")  # source rows 7, 10
    assert priv.votes[0].tolist() == [5, 6, 7, 2, 4, 3, 1]
    assert priv.votes[1].tolist() == [1, 0, 0, 11, 0, 0, 0]


def test_ferplus_errors(tmp_path, capsys):
    rows, _ = sample_rows()
    src = write_csv(tmp_path / "fer.csv", rows)
    fp = write_ferplus(tmp_path / "fernew.csv", len(rows) + 1)
    code, _, err = run_cli(["prepare", "--source", src, "--output", str(tmp_path / "o"), "--ferplus", fp], capsys)
    assert code == 1 and "row position" in err and err.count("\n") == 1
    folder = tmp_path / "imgs" / "train" / "happy"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(image_bytes(face_like(1)))
    code, _, err = run_cli(["prepare", "--source", str(tmp_path / "imgs"), "--output", str(tmp_path / "o"),
                            "--ferplus", fp], capsys)
    assert code == 2 and "CSV source" in err and err.count("\n") == 1


def make_folder(root):
    files = {
        "train/happy/Training_10.png": image_bytes(face_like(1)),
        "train/Angry/Training_11.jpg": image_bytes(face_like(2), "JPEG"),
        "train/fear/broken.jpg": b"\xff\xd8\xff not really a jpeg",
        "train/contempt/x.png": image_bytes(face_like(3)),
        "train/sad/big_rgb.png": image_bytes(np.stack([face_like(4, 96)] * 3, axis=-1)),
        "test/sad/PublicTest_5.png": image_bytes(face_like(5)),
        "test/sad/PrivateTest_6.png": image_bytes(face_like(6)),
        "test/neutral/plain.png": image_bytes(face_like(7)),
        "test/neutral/notes.txt": b"not an image, ignored",
        "README.md": b"ignored",
    }
    for rel, payload in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return files


def test_folder_layout(tmp_path, capsys):
    files = make_folder(tmp_path / "fer")
    out_dir = str(tmp_path / "out")
    code, out, err = run_cli(["prepare", "--source", str(tmp_path / "fer"), "--output", out_dir], capsys)
    assert code == 0, err
    s = data.read_summary(out_dir)
    # sorted file list: test/neutral/plain, test/sad/PrivateTest_6, test/sad/PublicTest_5,
    # train/Angry/..., train/contempt/x, train/fear/broken, train/happy/..., train/sad/big_rgb
    assert s["source"]["kind"] == "folder" and s["source"]["rows"] == 8
    bad = {b["file"]: b["reason"] for b in s["bad_rows"]}
    assert set(bad) == {"train/fear/broken.jpg", "train/contempt/x.png"}
    assert "cannot decode" in bad["train/fear/broken.jpg"]
    assert "unknown emotion folder" in bad["train/contempt/x.png"]
    assert s["source"]["resized_images"] == 1
    counts = {k: v["rows"] for k, v in s["counts"].items()}
    assert counts == {"Training": 3, "PublicTest": 1, "PrivateTest": 2}

    priv = data.load_split(out_dir, "PrivateTest")
    assert priv.labels.tolist() == [6, 4]  # unprefixed test/ image -> PrivateTest
    train = data.load_split(out_dir, "Training")
    assert train.labels.tolist() == [0, 3, 4]
    want = preprocess.to_gray48(preprocess.decode(files["train/sad/big_rgb.png"]))
    assert (train.pixels[2] == want).all()
    with open(os.path.join(out_dir, data.SOURCES_FILE)) as f:
        listed = {int(r["source_row"]): r["file"] for r in csv.DictReader(f)}
    assert listed[int(train.source_rows[0])] == "train/Angry/Training_11.jpg"


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, _, err = run_cli(["prepare", "--source", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o")],
                           capsys)
    assert code == 1 and "source not found" in err and err.count("\n") == 1
    code, _, err = run_cli(["prepare", "--source", "x.csv"], capsys)
    assert code == 2 and "--output" in err and err.count("\n") == 1
    code, _, err = run_cli(["prepare", "--source", "x.csv", "--output", "o", "--drop-everything"], capsys)
    assert code == 2 and err.count("\n") == 1
    (tmp_path / "notfer.csv").write_text("a,b\n1,2\n")
    code, _, err = run_cli(["prepare", "--source", str(tmp_path / "notfer.csv"), "--output", str(tmp_path / "o")],
                           capsys)
    assert code == 1 and "not a FER-2013 CSV" in err and err.count("\n") == 1
    rows, _ = sample_rows()
    full = gzip.compress(("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)).encode())
    (tmp_path / "cut.csv.gz").write_bytes(full[: len(full) // 2])
    code, _, err = run_cli(["prepare", "--source", str(tmp_path / "cut.csv.gz"), "--output", str(tmp_path / "o")],
                           capsys)
    assert code == 1 and "cannot read" in err and err.count("\n") == 1


def test_rerun_removes_stale_split(tmp_path):
    out_dir = str(tmp_path / "out")
    img = px_text(face_like(1))
    ingest.prepare(write_csv(tmp_path / "a.csv", [(0, img, "Training"), (1, img, "PublicTest")]), out_dir)
    assert os.path.exists(data.split_path(out_dir, "PublicTest"))
    s = ingest.prepare(write_csv(tmp_path / "b.csv", [(0, img, "Training")]), out_dir)
    assert not os.path.exists(data.split_path(out_dir, "PublicTest")) and s["splits"] == ["Training"]
    with pytest.raises(data.FerRayError, match="no PublicTest split"):
        data.load_split(out_dir, "PublicTest")


def test_prepared_data_on_s3(tmp_path, bucket):
    rows, good = sample_rows()
    src = write_csv(tmp_path / "fer.csv", rows)
    local = str(tmp_path / "local")
    remote = f"{bucket}/prepared/fer"
    fp = write_ferplus(tmp_path / "fernew.csv", len(rows), special={1: [0] * 9 + [10]})
    s_local = ingest.prepare(src, local, ferplus=fp)
    s_remote = ingest.prepare(src, remote, ferplus=fp)
    assert data.checksum(remote) == data.checksum(local) == s_remote["checksum"] == s_local["checksum"]
    assert data.read_summary(remote)["counts"] == s_local["counts"]
    for split in data.SPLITS:
        a, b = data.load_split(local, split), data.load_split(remote, split)
        assert (a.pixels == b.pixels).all() and (a.labels == b.labels).all()
        assert (a.votes == b.votes).all() and (a.has_votes == b.has_votes).all()
    with pytest.raises(data.FerRayError, match="no Training split"):
        data.load_split(f"{bucket}/nothing", "Training")


def test_png_pixels_round_trip_locally_and_on_s3(tmp_path, bucket, capsys):
    rows, good = sample_rows()
    src = write_csv(tmp_path / "fer.csv", rows)
    fp = write_ferplus(tmp_path / "fernew.csv", len(rows), special={1: [0] * 9 + [10]})
    raw, png, remote = str(tmp_path / "raw"), str(tmp_path / "png"), f"{bucket}/prepared/png"
    ingest.prepare(src, raw, ferplus=fp)
    code, out, err = run_cli(["prepare", "--source", src, "--output", png, "--ferplus", fp, "--png"], capsys)
    assert code == 0, err
    assert data.read_summary(png)["options"]["png"] is True
    ingest.prepare(src, remote, ferplus=fp, png=True)
    for split in data.SPLITS:
        a, b, c = (data.load_split(d, split) for d in (raw, png, remote))
        for other in (b, c):
            assert (a.pixels == other.pixels).all() and (a.labels == other.labels).all()
            assert (a.source_rows == other.source_rows).all() and (a.votes == other.votes).all()
    assert data.checksum(png) == data.checksum(remote) != data.checksum(raw)
    # a real-looking face compresses: PNG bytes are smaller than the 2,304 raw ones
    import pyarrow.parquet as pq

    sizes = pq.read_table(data.split_path(png, "Training")).column("pixels").to_pylist()
    assert all(len(p) < 48 * 48 for p in sizes)
