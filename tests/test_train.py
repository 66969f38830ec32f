import json
import os

import pytest
import torch

from conftest import env_without_cluster, fer_ray_command, probabilities
from fer_ray import bundle, cli, data, loop, models, storage, train
from fer_ray.errors import UsageError
from test_loop import separable

TINY_ARGS = {"widths": [8, 8, 16, 16]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tiny prepared data: 96 training and 48 validation images, with FER+-style votes."""
    d = tmp_path_factory.mktemp("prepared")
    for split, n, seed in (("Training", 96, 0), ("PublicTest", 48, 1)):
        px, y, votes = separable(n, seed)
        data.write_split(str(d), split, px, y, votes=votes)
    return str(d)


def tiny(prepared, storage_path, name, values=None, **over):
    """A resolved tiny config: `values` as from a config file, `over` as flags."""
    flags = {"data": prepared, "arch": "fastnet", "arch_args": TINY_ARGS, "epochs": 1, "batch_size": 32,
             "storage": storage_path, "name": name, "augment": {"erase": 0.5}, **over}
    return train.resolve(values or {}, flags)


def one_line_error(capsys, argv, code=2):
    assert cli.main(["train", *argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_rejects_bad_arguments_in_one_line(capsys, prepared, tmp_path):
    base = ["--data", prepared, "--storage", str(tmp_path)]
    assert "epochs must be >= 1" in one_line_error(capsys, [*base, "--epochs", "0"])
    assert "no Training split" in one_line_error(capsys, ["--data", str(tmp_path / "nope")])
    assert "unknown architecture 'vgg99'" in one_line_error(capsys, [*base, "--arch", "vgg99"])
    assert "JSON object" in one_line_error(capsys, [*base, "--arch-args", "{widths"])
    assert "does not take arch args" in one_line_error(capsys, [*base, "--arch-args", '{"depth": 3}'])
    assert "--data is required" in one_line_error(capsys, ["--storage", str(tmp_path)])
    assert "invalid choice" in one_line_error(capsys, [*base, "--balance", "oversample"])
    assert "workers must be >= 0" in one_line_error(capsys, [*base, "--workers", "-1"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nlearning_rate: 0.1\n")
    assert "unknown setting(s) learning_rate" in one_line_error(capsys, [*base, "--config", str(cfg)])
    data.write_split(str(tmp_path / "novotes"), "Training", *separable(4, 0)[:2])
    data.write_split(str(tmp_path / "novotes"), "PublicTest", *separable(4, 1)[:2])
    assert "needs FER+ votes" in one_line_error(capsys, ["--data", str(tmp_path / "novotes"), "--soft-labels"])
    assert "config file not found" in one_line_error(capsys, [*base, "--config", str(tmp_path / "x.yaml")])
    assert "needs both --teacher" in one_line_error(capsys, [*base, "--distill", "0.5"])
    assert "--teacher: not a model bundle" in one_line_error(capsys, [*base, "--teacher", str(tmp_path), "--distill", "0.5"])
    assert "distill weight must be in [0, 1]" in one_line_error(capsys, [*base, "--teacher", str(tmp_path), "--distill", "2"])


def test_config_file_values_are_defaults_that_flags_override(prepared, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("epochs: 7\nbatch_size: 64\noptimizer: adamw\naugment: {rotate: 20}\nbalance: weights\n")
    cfg = train.resolve(train.read_config_file(str(cfg_file)), {"data": prepared, "epochs": 2, "storage": str(tmp_path)})
    assert cfg.epochs == 2 and cfg.batch_size == 64 and cfg.balance == "weights"
    assert cfg.lr == 1e-3 and cfg.weight_decay == 0.05  # adamw defaults
    assert cfg.augment["rotate"] == 20 and cfg.augment["flip"] == 0.5
    assert cfg.name.startswith("classic-")
    # the shipped example configs are valid
    examples = os.path.join(os.path.dirname(__file__), "..", "configs")
    for name in sorted(os.listdir(examples)):
        train.resolve(train.read_config_file(os.path.join(examples, name)), {"data": prepared, "gpu": False})


def test_single_process_run_checkpoints_resumes_and_writes_a_bundle(prepared, tmp_path, capsys):
    argv = ["train", "--data", prepared, "--arch", "fastnet", "--arch-args", json.dumps(TINY_ARGS), "--epochs", "1",
            "--batch-size", "32", "--workers", "0", "--storage", str(tmp_path), "--name", "solo", "--soft-labels",
            "--checkpoints-to-keep", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "bundle" in out
    run = tmp_path / "solo"
    saved = train.read_config_file(str(run / "config.yaml"))
    assert saved["soft_labels"] is True and saved["arch_args"] == TINY_ARGS and saved["workers"] == 0
    # same name, more epochs, no other flags: the saved config supplies arch etc., epoch 1 is not redone
    assert cli.main(["train", "--data", prepared, "--storage", str(tmp_path), "--name", "solo", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming solo after epoch 1" in out and "epoch   2/2" in out and "epoch   1/" not in out
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint_local_000002"]
    b = bundle.load(str(run / "bundle"))
    training = b.meta["training"]
    assert [h["epoch"] for h in training["history"]] == [1, 2]
    assert set(loop.HISTORY_KEYS) <= set(training["history"][0])
    assert training["workers"] == 0 and training["epochs"] == 2 and training["wall_time_s"] > 0
    best = max(training["history"], key=lambda h: h["val_acc"])
    assert b.meta["metrics"]["PublicTest"]["accuracy"] == pytest.approx(best["val_acc"])
    assert b.meta["data_checksum"] == data.checksum(prepared)
    # a different architecture under the same name is refused
    assert cli.main(["train", "--data", prepared, "--storage", str(tmp_path), "--name", "solo", "--arch", "classic"]) == 2
    assert b.precision == "int8" and b.meta["int8"]["calibration"]["images"] == 96  # calibrated at the end


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(prepared, tmp_path):
    """A 3-epoch run stopped after its epoch-2 checkpoint (the epoch-3 checkpoint and bundle never
    written) and re-run with the same command restores weights, optimizer moments, schedule and
    seeds: it ends with the uninterrupted run's weights (a run with another seed does not)."""
    import shutil

    import torch

    def cfg(name, seed=0):
        return tiny(prepared, str(tmp_path), name, workers=0, epochs=3, optimizer="adamw", seed=seed,
                    checkpoints_to_keep=2, augment={"erase": 0.5, "rotate": 10})

    def weights(name):
        return train.LocalReporter(cfg(name)).latest_state()["model"]

    def same(a, b):
        return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

    train.run(cfg("whole"))
    shutil.copytree(tmp_path / "whole", tmp_path / "stopped")
    shutil.rmtree(tmp_path / "stopped" / "checkpoint_local_000003")
    shutil.rmtree(tmp_path / "stopped" / "bundle")
    resumed = train.run(cfg("stopped"))
    assert resumed["epochs_run"] == 1 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert same(weights("whole"), weights("stopped"))
    train.run(cfg("other", seed=1))
    assert not same(weights("whole"), weights("other"))


def test_init_starts_from_a_bundles_weights_and_checks_the_arch(prepared, tmp_path):
    import torch

    first = train.run(tiny(prepared, str(tmp_path), "parent", workers=0))
    child = train.run(tiny(prepared, str(tmp_path), "child", workers=0, init=first["bundle"], lr=1e-12,
                           warmup_epochs=0, weight_decay=0.0))
    parent_w = bundle.load(first["bundle"], optimize=False, precision="fp32").model.state_dict()
    child_w = train.LocalReporter(tiny(prepared, str(tmp_path), "child", workers=0)).latest_state()["model"]
    convs = [k for k, v in parent_w.items() if v.dim() > 1]
    assert convs and all(torch.allclose(parent_w[k], child_w[k], atol=1e-6) for k in convs)
    assert child["epochs_run"] == 1
    with pytest.raises(UsageError, match="--init .* is fastnet .* whose weights do not fit"):
        tiny(prepared, str(tmp_path), "wrong", workers=0, init=first["bundle"], arch_args={"widths": [8, 8]})
    # other arch args with the same weights' shapes: a stride-2 model starts a full-resolution one
    tiny(prepared, str(tmp_path), "sharp", workers=0, init=first["bundle"], arch_args={**TINY_ARGS, "stem_stride": 1})
    with pytest.raises(UsageError, match="--init: not a model bundle"):
        tiny(prepared, str(tmp_path), "missing", workers=0, init=str(tmp_path / "nothing"))


# What the GPU machine lacks: a run with --workers 0 must not need any of these.
NOT_ON_GPU_MACHINE = ("ray", "s3fs", "botocore", "aiobotocore", "duckdb", "moto")
BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
"""
RUN_CLI = "from fer_ray import cli; sys.exit(cli.main(sys.argv[1:]))"


def test_distilling_from_a_bundle(prepared, tmp_path):
    teacher = str(tmp_path / "teacher")
    bundle.save(teacher, models.build("fastnet", **TINY_ARGS), "fastnet", TINY_ARGS)
    argv = ["train", "--data", prepared, "--arch", "fastnet", "--arch-args", json.dumps(TINY_ARGS), "--epochs", "1",
            "--batch-size", "32", "--workers", "0", "--storage", str(tmp_path), "--name", "pupil",
            "--teacher", teacher, "--distill", "0.5", "--half-weights"]
    assert cli.main(argv) == 0
    training = bundle.load(str(tmp_path / "pupil" / "bundle")).meta["training"]
    assert training["teacher"] == teacher and training["distill"] == 0.5
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "pupil" / "bundle" / bundle.WEIGHTS_FILE))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}


def test_single_process_training_runs_without_ray(prepared, tmp_path):
    import subprocess
    import sys

    blocker = BLOCKER.format(blocked=set(NOT_ON_GPU_MACHINE))
    argv = ["train", "--data", prepared, "--arch", "fastnet", "--arch-args", json.dumps(TINY_ARGS), "--epochs", "1",
            "--batch-size", "32", "--workers", "0", "--storage", str(tmp_path), "--name", "noray"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", blocker + RUN_CLI, *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert bundle.load(str(tmp_path / "noray" / "bundle")).meta["training"]["epochs_completed"] == 1
    # and the blocker really blocks
    res = subprocess.run([sys.executable, "-c", blocker + "import ray.train"], capture_output=True, text=True)
    assert res.returncode != 0 and "blocked for this test: ray" in res.stderr


def test_the_command_starts_its_own_ray_when_no_cluster_is_named(prepared, tmp_path):
    """`fer-ray train --workers 1` without RAY_ADDRESS: a private local Ray (as labeling's), whose
    Ray Train run finds the state API it asks about the run (no warning every few seconds)."""
    import subprocess

    argv = ["train", "--data", prepared, "--arch", "fastnet", "--arch-args", json.dumps(TINY_ARGS), "--epochs", "1",
            "--batch-size", "32", "--workers", "1", "--storage", str(tmp_path), "--name", "own-ray"]
    res = subprocess.run([*fer_ray_command(), *argv], capture_output=True, text=True, env=env_without_cluster(),
                         timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert bundle.load(str(tmp_path / "own-ray" / "bundle")).meta["training"]["epochs_completed"] == 1
    assert "State API may be temporarily unavailable" not in out and "Failed to query" not in out


def differences(a, b, path="state") -> list[str]:
    """Where two training states differ: tensors to 1e-6, floats to 1e-6 relative, the rest
    exactly; the per-epoch wall times (`time_s`) are not compared."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a if k != "time_s" for d in differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-6)
        return [] if same else [f"{path}: tensors differ"]
    if isinstance(a, float) or isinstance(b, float):
        return [] if a == pytest.approx(b, rel=1e-6, abs=1e-12) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def ray_checkpoints(run: str) -> dict[int, dict]:
    """{epoch: state} of the Ray Train checkpoints in a run folder (local or s3://)."""
    import io

    fs, root = storage.filesystem(run)
    fs.invalidate_cache()  # s3fs caches listings; the run wrote behind its back
    states = {}
    for path in fs.glob(f"{root}/checkpoint_*/{train.STATE_FILE}"):
        with fs.open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        assert state["epoch"] not in states, f"two checkpoints of epoch {state['epoch']} in {run}"
        states[state["epoch"]] = state
    return states


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train rewrites it each time it registers a checkpoint


def dies_once(marker: str, epoch: int, rank: int, run: str, reference: str):
    """A Ray Train worker function: the real one, except at `epoch` of the first attempt to reach it:

    - rank 0 saves the state it is about to report to `reference`: what an uninterrupted run has
      after `epoch` (DDP on CPU is deterministic: the same every run);
    - `rank` kills its own process instead of reporting `epoch`, once (the first to rename
      `marker` away dies), so the epoch-`epoch` checkpoint is never written.

    Before dying it waits, polling with a deadline, for two files: rank 0's `reference` (so the
    death cannot stop rank 0 before it saved it), and Ray Train's <run>/checkpoint_manager_snapshot.json
    naming the epoch-(`epoch` - 1) checkpoint as the latest. Ray Train collects reports by
    polling its workers, and a worker that dies before its report of epoch - 1 was collected can
    take that checkpoint with it; the snapshot is written once the checkpoint is registered.
    Then it writes "died" into the claimed marker and exits."""

    def worker(loop_config):
        import time

        from fer_ray import storage as worker_storage
        from fer_ray import train as worker_train

        real = worker_train.RayReporter.report

        def report(self, metrics, state):
            if metrics["epoch"] == epoch and self.rank == 0 and not os.path.exists(reference):
                torch.save(state, f"{reference}.tmp")
                os.replace(f"{reference}.tmp", reference)
            if metrics["epoch"] == epoch and self.rank == rank and _claim(marker):
                snapshot = worker_storage.join(run, SNAPSHOT)
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    try:  # missing at first, and Ray may be replacing it as it is read: ask again
                        latest = json.loads(worker_storage.read_bytes(snapshot))["latest_checkpoint_result"]
                        registered = latest["metrics"]["epoch"]
                    except Exception:
                        registered = None
                    if registered == epoch - 1 and os.path.exists(reference):
                        with open(f"{marker}.claimed", "w") as f:
                            f.write("died")
                        os._exit(17)
                    time.sleep(0.1)
                raise RuntimeError(f"epoch {epoch - 1} checkpoint never registered in {snapshot}, "
                                   f"or no reference state at {reference}")
            real(self, metrics, state)

        worker_train.RayReporter.report = report
        return worker_train._train_worker(loop_config)

    return worker


def _claim(path: str) -> bool:
    try:
        os.rename(path, f"{path}.claimed")
        return True
    except OSError:
        return False


@pytest.fixture
def ship_this_module():
    """The Ray workers cannot import this file: send its functions (dies_once's worker) by value."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_train_two_workers_checkpoints_to_s3_and_resumes_with_the_plateau_schedule(
        ray_local, bucket, prepared, tmp_path, monkeypatch, ship_this_module):
    """A 3-epoch run (config `schedule: plateau`, which cuts the LR whenever val accuracy does not
    improve) dies at epoch 3, after its epoch-2 checkpoint; re-run under the same name with more
    epochs, it resumes after epoch 2 and its epoch 3 is the uninterrupted run's epoch 3: weights,
    optimizer moments, plateau state (best, bad epochs, LR) and history."""
    from fer_ray.errors import FerRayError

    runs, run = f"{bucket}/runs", f"{bucket}/runs/ddp"
    config_file = tmp_path / "plateau.yaml"
    config_file.write_text("schedule: plateau\nplateau_patience: 0\n")
    values = train.read_config_file(str(config_file))
    marker, reference = tmp_path / "die", tmp_path / "uninterrupted-epoch3.pt"
    marker.write_text("once")
    with monkeypatch.context() as m:
        m.setattr(train, "_train_worker", dies_once(str(marker), epoch=3, rank=1, run=run, reference=str(reference)))
        with pytest.raises(FerRayError, match="training failed"):
            train.run(tiny(prepared, runs, "ddp", values, workers=2, balance="sampling", epochs=3, max_failures=0))
    assert (tmp_path / "die.claimed").read_text() == "died"  # rank 1 died at epoch 3
    fs, root = storage.filesystem(run)
    assert sorted(ray_checkpoints(run)) == [1, 2] and fs.exists(f"{root}/config.yaml")
    assert not fs.exists(f"{root}/bundle")
    uninterrupted = torch.load(reference, weights_only=True)
    lrs = [h["lr"] for h in uninterrupted["history"]]
    assert lrs[2] < lrs[0], f"premise: the plateau schedule cut the LR before epoch 3 ({lrs})"

    # same name, more epochs, no config file: the saved config supplies the schedule
    resumed = train.run(tiny(prepared, runs, "ddp", workers=2, balance="sampling", epochs=4))
    assert resumed["epochs_run"] == 2  # epochs 3 and 4: it started after the epoch-2 checkpoint
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][2]["lr"] == pytest.approx(lrs[2])  # the LR at the resumed epoch
    states = ray_checkpoints(run)
    assert sorted(states) == [3, 4]  # checkpoints_to_keep
    assert not differences(states[3], uninterrupted), differences(states[3], uninterrupted)
    assert differences(states[4]["model"], uninterrupted["model"])  # and epoch 4 trained on
    b = bundle.load(f"{run}/bundle")
    training = b.meta["training"]
    assert training["schedule"] == "plateau" and training["plateau_patience"] == 0
    assert training["workers"] == 2 and len(training["history"]) == 4
    # the bundle holds the best epoch's weights: evaluated afresh they give the recorded accuracy
    val = data.load_split(prepared, "PublicTest")
    fresh = float((probabilities(b, val.pixels).argmax(1).numpy() == val.labels).mean())
    assert b.meta["metrics"]["PublicTest"]["accuracy"] == pytest.approx(fresh, abs=1.5 / len(val.labels))


def test_ray_train_retries_a_killed_worker_from_the_last_checkpoint(ray_local, prepared, tmp_path, monkeypatch,
                                                                     ship_this_module):
    """Rank 1 dies at epoch 2 of a 2-epoch run (cosine schedule); Ray Train restarts the workers
    from the epoch-1 checkpoint, and the run ends where an uninterrupted one does."""
    run = str(tmp_path / "runs" / "crashy")
    marker, reference = tmp_path / "die", tmp_path / "uninterrupted-epoch2.pt"
    marker.write_text("once")
    monkeypatch.setattr(train, "_train_worker", dies_once(str(marker), epoch=2, rank=1, run=run,
                                                          reference=str(reference)))
    cfg = tiny(prepared, str(tmp_path / "runs"), "crashy", workers=2, epochs=2, max_failures=1)
    result = train.run(cfg)
    assert (tmp_path / "die.claimed").read_text() == "died"  # rank 1 did die
    assert result["epochs_run"] == 1  # the retried attempt started from the epoch-1 checkpoint
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert bundle.load(result["bundle"]).meta["training"]["epochs_completed"] == 2
    states = ray_checkpoints(run)
    uninterrupted = torch.load(reference, weights_only=True)
    assert sorted(states) == [1, 2] and uninterrupted["epoch"] == 2
    # weights, optimizer moments, schedule position, history: as if it had never died ...
    assert not differences(states[2], uninterrupted), differences(states[2], uninterrupted)
    # ... which says something: epoch 2 moved the weights away from the checkpoint it resumed from
    assert differences(states[1]["model"], uninterrupted["model"])


def test_training_with_s3_storage_survives_s3_faults(faulty_s3, bucket, prepared):
    from s3faults import KINDS

    faulty_s3.set(0.2)  # 503 SlowDown, 500, dropped connections, slow answers on every S3 call
    result = train.run(tiny(prepared, f"{bucket}/runs", "faulty", workers=0, epochs=2))
    again = train.run(tiny(prepared, f"{bucket}/runs", "faulty", workers=0, epochs=3))  # resumes
    faulty_s3.set(0.0)
    assert sum(faulty_s3.counts[k] for k in KINDS) >= 3, faulty_s3.counts
    assert [h["epoch"] for h in result["history"]] == [1, 2] and again["epochs_run"] == 1
    assert bundle.load(again["bundle"]).meta["training"]["epochs_completed"] == 3


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(CONFIGS) if n.endswith(".yaml")))
def test_shipped_configs_are_valid(prepared, tmp_path, name):
    values = train.read_config_file(os.path.join(CONFIGS, name))
    cfg = train.resolve(values, {"data": prepared, "storage": str(tmp_path), "gpu": False})  # no GPU here
    assert cfg.epochs >= 1 and models.count_params(models.build(cfg.arch, **cfg.arch_args)) > 0
