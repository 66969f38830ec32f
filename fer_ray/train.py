"""The training job: a resolved config -> Ray Train (or one process) -> checkpoints -> a model bundle.

Ray stays at the edges. `run(config)`:
  1. resolves and validates the config (defaults < the run's saved config.yaml < --config file <
     flags), saves it as <storage>/<name>/config.yaml;
  2. workers >= 1: a TorchTrainer with `workers` data-parallel workers (DDP), checkpoints to
     <storage>/<name>/checkpoint_* through Ray Train (local folder or s3://); re-running the same
     name resumes from the latest checkpoint, and a failed worker is retried `max_failures` times
     from it. workers == 0: the same loop in this process (no Ray imported), a local reporter
     that prints and writes <storage>/<name>/checkpoint_local_<epoch>/ — how it trains on a GPU
     machine without Ray;
  3. writes the bundle of the best-val-accuracy weights to <storage>/<name>/bundle.

Every worker loads the prepared splits itself and takes a rank-strided share of a per-epoch
permutation of the in-memory uint8 array (loop.ArrayBatches): no DataLoader worker processes, no
per-sample collation, no object-store traffic — on 2 CPUs every cycle goes to the model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import time

import torch

from . import bundle, config, data, loop, models, placement, preprocess, quantize, storage
from .config import TrainConfig
from .errors import FerRayError, UsageError

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
BUNDLE_DIR = "bundle"
LOCAL_CKPT_PREFIX = "checkpoint_local_"


# --------------------------------------------------------------------------- config


def read_config_file(path: str) -> dict:
    """A YAML (or JSON) mapping of settings; unknown keys are an error."""
    try:
        import yaml

        parse, errors = yaml.safe_load, (yaml.YAMLError,)
    except ImportError:  # the GPU machine may lack pyyaml; save_config then wrote JSON
        parse, errors = json.load, (ValueError,)
    try:
        fs, p = storage.filesystem(path)
        with fs.open(p, "r") as f:
            values = parse(f) or {}
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except errors as exc:
        raise UsageError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    config.check_keys(values, path)
    return values


def run_dir(cfg: TrainConfig) -> str:
    root = cfg.storage if storage.is_s3(cfg.storage) else os.path.abspath(cfg.storage)
    return storage.join(root, cfg.name)


def _saved_config(storage_root: str, name: str) -> dict | None:
    path = storage.join(storage_root, name, CONFIG_FILE)
    return read_config_file(path) if storage.exists(path) else None


def resolve(file_values: dict | None = None, flags: dict | None = None) -> TrainConfig:
    """defaults < saved config of the same run (resume) < config file < flags. Validated.

    `flags` holds only explicitly given values (None means not given)."""
    file_values = dict(file_values or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config.check_keys(file_values, "config")
    config.check_keys(flags, "flags")
    chosen = {**file_values, **flags}
    store = chosen.get("storage") or TrainConfig.storage
    name = chosen.get("name")
    saved = _saved_config(store if storage.is_s3(store) else os.path.abspath(store), name) if name else None
    values = {**(saved or {}), **chosen}
    # Ray workers do not run in this directory: local paths must be absolute
    for key in ("storage", "data"):
        if values.get(key) and not storage.is_s3(values[key]):
            values[key] = os.path.abspath(values[key])
    cfg = TrainConfig.from_dict(values)
    validate(cfg, saved)
    return cfg


def validate(cfg: TrainConfig, saved: dict | None = None) -> None:
    """What the config alone cannot check: the data, the architecture, bundles, a GPU, a resumed run."""
    if not cfg.data:
        raise UsageError("--data is required: the prepared data directory (fer-ray prepare --output)")
    for split in ("Training", "PublicTest"):
        path = data.split_path(cfg.data, split)
        if not storage.exists(path):
            raise UsageError(f"--data {cfg.data}: no {split} split ({path}); run `fer-ray prepare` first")
    if cfg.soft_labels and not _has_votes(cfg.data):
        raise UsageError(f"--soft-labels needs FER+ votes, and {cfg.data} has none (prepare it with the FER+ file)")
    if cfg.arch not in models.names():
        raise UsageError(f"unknown architecture {cfg.arch!r} (choose from {', '.join(models.names())})")
    try:
        models.build(cfg.arch, **cfg.arch_args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"arch {cfg.arch} does not take arch args {json.dumps(cfg.arch_args)}: {exc}") from None
    if cfg.gpu and cfg.workers == 0 and not torch.cuda.is_available():
        raise UsageError("--gpu with --workers 0 needs a CUDA device in this process, and there is none")
    if cfg.teacher:
        meta = _bundle_setting(cfg, "teacher").meta
        if (meta["preprocess"]["mean"], meta["preprocess"]["std"]) != (preprocess.MEAN, preprocess.STD):
            raise UsageError("--teacher normalises its input differently from this fer-ray's models")
    if cfg.init:  # same arch and tensor shapes: e.g. a stride-2 fastnet may start a stride-1 one
        init = _bundle_setting(cfg, "init")
        if init.meta["arch"] != cfg.arch or _shapes(init.model) != _shapes(models.build(cfg.arch, **cfg.arch_args)):
            raise UsageError(f"--init {cfg.init} is {init.meta['arch']} {json.dumps(init.meta.get('arch_args') or {})}, "
                             f"whose weights do not fit the run's {cfg.arch} {json.dumps(cfg.arch_args)}")
    if cfg.name is None:
        cfg.name = f"{cfg.arch}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if saved and (saved.get("arch"), saved.get("arch_args") or {}) != (cfg.arch, cfg.arch_args):
        raise UsageError(
            f"run {cfg.name} in {cfg.storage} was trained with arch {saved.get('arch')} "
            f"{json.dumps(saved.get('arch_args') or {})}; resume it with those or pick another --name"
        )


def _bundle_setting(cfg: TrainConfig, key: str) -> bundle.Bundle:
    """A bundle-valued setting (teacher, init): a shipped name or a local path becomes an absolute
    path (Ray workers run elsewhere); returns the bundle as trained (fp32, layers unfused), or a
    one-line error."""
    if not storage.is_s3(getattr(cfg, key)):
        setattr(cfg, key, os.path.abspath(bundle.resolve(getattr(cfg, key))))
    try:
        return bundle.load(getattr(cfg, key), optimize=False, precision="fp32")
    except FerRayError as exc:
        raise UsageError(f"--{key}: {exc}") from None


def _shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _has_votes(data_dir: str) -> bool:
    """Whether the prepared Training split carries FER+ votes (reads that one column only)."""
    import pyarrow.parquet as pq

    fs, root = storage.arrow_filesystem(data_dir)
    votes = pq.read_table(f"{root}/Training.parquet", columns=["votes"], filesystem=fs).column("votes")
    return votes.null_count < len(votes)


def save_config(cfg: TrainConfig) -> str:
    path = storage.join(run_dir(cfg), CONFIG_FILE)
    try:
        import yaml

        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    except ImportError:  # JSON is valid YAML: the GPU machine may lack pyyaml
        text = json.dumps(cfg.to_dict(), indent=2)
    storage.write_bytes(path, text.encode())
    return path


# --------------------------------------------------------------------------- shared pieces


def progress_line(metrics: dict, epochs: int) -> str:
    flag = "  *" if metrics["best_epoch"] == metrics["epoch"] else ""
    stop = "  (early stop)" if metrics.get("stopped_early") else ""
    return (
        f"epoch {metrics['epoch']:>3}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}"
        f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.4f}  lr {metrics['lr']:.2e}"
        f"  {metrics['time_s']:.1f}s{flag}{stop}"
    )


def make_batches(cfg: TrainConfig, rank: int, world: int, device) -> tuple[loop.ArrayBatches, loop.ArrayBatches]:
    train = data.load_split(cfg.data, "Training")
    val = data.load_split(cfg.data, "PublicTest")
    per_worker = max(1, cfg.batch_size // world)
    tb = loop.ArrayBatches(
        train.pixels, train.labels, train.votes if cfg.soft_labels else None, batch_size=per_worker,
        shuffle=True, rank=rank, world=world, seed=cfg.seed, balanced=cfg.balance == "sampling", device=device,
    )
    vb = loop.ArrayBatches(val.pixels, val.labels, batch_size=cfg.eval_batch_size, rank=rank, world=world, device=device)
    return tb, vb


def build_model(cfg: TrainConfig, device) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = models.build(cfg.arch, **cfg.arch_args)
    if cfg.init:  # a resumed run then loads its checkpoint over these
        model.load_state_dict(bundle.load(cfg.init, optimize=False, precision="fp32").model.state_dict())
    return loop.to_device(model, device)


def build_teacher(cfg: TrainConfig, device) -> torch.nn.Module | None:
    if not cfg.teacher or cfg.distill <= 0:
        return None
    # On CPU the teacher runs int8 when calibrated: as accurate as fp32 (the shipped models' cards)
    # at a fraction of the cost, which matters when the teacher is an ensemble
    b = bundle.load(cfg.teacher, gpu=device.type == "cuda", precision="auto")
    return b.model.to(device).eval().requires_grad_(False)


def say(line: str) -> None:
    """One progress line on stdout (sys.stdout directly: Ray Train's patched print() logs it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _save_state(state: dict, local_dir: str) -> None:
    os.makedirs(local_dir, exist_ok=True)
    tmp = os.path.join(local_dir, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(local_dir, STATE_FILE))


def load_state(path: str) -> dict:
    """A checkpoint's state.pt: tensors and plain containers only (weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FerRayError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- single process


class LocalReporter:
    """Prints progress and writes <run>/checkpoint_local_<epoch>/state.pt (local or S3)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dir = run_dir(cfg)
        self.fs, self.root = storage.filesystem(self.dir)

    def checkpoints(self) -> list[tuple[int, str]]:
        if not self.fs.exists(self.root):
            return []
        out = []
        for p in self.fs.ls(self.root, detail=False):
            base = p.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(LOCAL_CKPT_PREFIX) and base[len(LOCAL_CKPT_PREFIX):].isdigit():
                out.append((int(base[len(LOCAL_CKPT_PREFIX):]), p.rstrip("/")))
        return sorted(out)

    def latest_state(self) -> dict | None:
        found = self.checkpoints()
        if not found:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, STATE_FILE)
            self.fs.get(f"{found[-1][1]}/{STATE_FILE}", local)
            return load_state(local)

    def report(self, metrics: dict, state: dict) -> None:
        say(progress_line(metrics, self.cfg.epochs))
        name = f"{LOCAL_CKPT_PREFIX}{metrics['epoch']:06d}"
        with tempfile.TemporaryDirectory() as tmp:
            _save_state(state, tmp)
            target = f"{self.root}/{name}"
            self.fs.makedirs(target, exist_ok=True)
            self.fs.put(os.path.join(tmp, STATE_FILE), f"{target}/{STATE_FILE}")
        for _, old in self.checkpoints()[: -self.cfg.checkpoints_to_keep]:
            self.fs.rm(old, recursive=True)


def _run_local(cfg: TrainConfig) -> tuple[dict, dict]:
    if cfg.cpus_per_worker:
        torch.set_num_threads(cfg.cpus_per_worker)
    device = torch.device("cuda" if cfg.gpu else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed 48x48 shapes: let cuDNN pick the fastest kernels
    reporter = LocalReporter(cfg)
    start = reporter.latest_state()
    if start:
        print(f"resuming {cfg.name} after epoch {start['epoch']}", flush=True)
    tb, vb = make_batches(cfg, 0, 1, device)
    model = build_model(cfg, device)
    result = loop.fit(model, tb, vb, cfg, reporter, start, build_teacher(cfg, device))
    state = reporter.latest_state() or start
    if state is None:
        raise FerRayError("training produced no checkpoint")
    return state, {"epochs_run": result["epochs_run"], "stopped_early": result["stopped_early"]}


# --------------------------------------------------------------------------- Ray Train


class RayReporter:
    """Every rank calls ray.train.report once per epoch; only rank 0 writes the checkpoint."""

    def __init__(self, cfg: TrainConfig, rank: int):
        self.cfg, self.rank = cfg, rank

    def report(self, metrics: dict, state: dict) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                _save_state(state, tmp)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if self.rank == 0:
            say(progress_line(metrics, self.cfg.epochs))


def _quiet_ray_reports() -> None:
    """Ray Train logs every report (all metrics, every rank) at INFO from a logger named after its
    source file, outside the `ray.train` loggers that LoggingConfig sets; our one progress line per
    epoch says the same. Cosmetic: skipped if Ray moves that module."""
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except Exception:
        pass


def _train_worker(loop_config: dict):
    import ray.train
    import ray.train.torch

    _quiet_ray_reports()
    cfg = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)  # Ray would leave every worker 1 thread
    device = ray.train.torch.get_device()
    start = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = load_state(os.path.join(d, STATE_FILE))
        if rank == 0:
            say(f"resuming {cfg.name} after epoch {start['epoch']}")
    tb, vb = make_batches(cfg, rank, world, device)
    model = ray.train.torch.prepare_model(build_model(cfg, device))
    result = loop.fit(model, tb, vb, cfg, RayReporter(cfg, rank), start,
                      build_teacher(cfg, device))
    return {"epochs_run": result["epochs_run"], "stopped_early": result["stopped_early"]}


def _run_ray(cfg: TrainConfig) -> tuple[dict, dict]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():  # as labeling: RAY_ADDRESS's cluster, or a private local Ray
        placement.ray_init(ray, dashboard=True)
    if not cfg.cpus_per_worker:  # default: share the cluster's CPUs evenly between the workers
        cpus = int(ray.cluster_resources().get("CPU", 1))
        largest = placement.largest_node_cpus(ray, 1)
        cfg = dataclasses.replace(cfg, cpus_per_worker=max(1, min(cpus // cfg.workers, int(largest))))

    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.storage,  # s3:// works through AWS_ENDPOINT_URL; never with storage_filesystem
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep),
            logging_config=LoggingConfig(log_level="WARNING"),  # our progress lines, not one INFO per report
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line for the user
        cause = exc.__cause__ or exc
        raise FerRayError(f"training failed: {type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}") from exc
    if result.checkpoint is None:
        raise FerRayError("training produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(os.path.join(d, STATE_FILE))
    return state, dict(result.return_value or {})


# --------------------------------------------------------------------------- the job


def write_bundle(cfg: TrainConfig, state: dict, summary: dict) -> tuple[str, dict]:
    model = models.build(cfg.arch, **cfg.arch_args)
    model.load_state_dict(state["best"]["model"])
    best = state["best"]
    training = {
        **cfg.to_dict(),
        "history": state["history"],
        "best_epoch": best["epoch"],
        "epochs_completed": state["epoch"],
        "stopped_early": bool(state.get("stopped")),
        "train_time_s": round(sum(h.get("time_s", 0.0) for h in state["history"]), 2),
        "wall_time_s": summary.get("wall_time_s"),
        "workers": cfg.workers,
    }
    metrics = {"PublicTest": {"accuracy": best["val_acc"], "loss": best["val_loss"]}}
    target = storage.join(run_dir(cfg), BUNDLE_DIR)
    checksum = data.checksum(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        local = tmp if storage.is_s3(target) else target
        # calibrated for int8 here: int8 on CPU is then the default at no cost to the user
        pixels = data.load_split(cfg.data, "Training").pixels if quantize.available() else None
        meta = bundle.save(local, model, cfg.arch, cfg.arch_args, training, checksum, metrics,
                           half=cfg.half_weights, calibrate_on=pixels, calibrated_from=cfg.data)
        if local != target:
            storage.put_folder(local, target)
    return target, meta


def run(cfg: TrainConfig) -> dict:
    """Train with a resolve()d config. Returns a summary: bundle path, best epoch/metrics, history."""
    t0 = time.perf_counter()
    save_config(cfg)
    where = "one process" if cfg.workers == 0 else f"{cfg.workers} Ray Train workers"
    print(f"training {cfg.arch} run {cfg.name} on {where} -> {run_dir(cfg)}", flush=True)
    state, summary = (_run_local if cfg.workers == 0 else _run_ray)(cfg)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    target, meta = write_bundle(cfg, state, summary)
    best = state["best"]
    print(
        f"best epoch {best['epoch']}: PublicTest accuracy {best['val_acc']:.4f} loss {best['val_loss']:.4f}; "
        f"bundle {target} ({meta['model_id']})",
        flush=True,
    )
    return {
        **summary,
        "bundle": target,
        "model_id": meta["model_id"],
        "run_dir": run_dir(cfg),
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "val_loss": best["val_loss"],
        "history": state["history"],
    }
