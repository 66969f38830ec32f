"""The two config tables: every setting of training and of labeling, with its default, type,
choices and help.

`fer-ray train`'s flags, the keys a YAML config file may hold, the resolved `config.yaml` saved
beside each run and the settings `loop.fit` reads all come from `TrainConfig`; `fer-ray label`'s
flags, what `label.run` takes, and the `config` a run's commit marker records from `LabelConfig`.
Checks here need nothing but the values; those that look at the world (does --data exist, does
the architecture take these args, is --teacher a bundle) live with the jobs (train.py, label.py).
"""

from __future__ import annotations

import copy
import re
from dataclasses import MISSING, asdict, dataclass, field, fields

from . import augment as aug
from .errors import UsageError
from .schema import FACE_MODES, PRECISIONS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "plateau")
BALANCE = ("none", "weights", "sampling")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _setting(default, kind, help, *, choices=(), metavar=None, flag=True):
    """`kind`: int, float, bool, str, dict or "augment". `flag=False`: config files only."""
    meta = {"kind": kind, "help": help, "choices": tuple(choices), "metavar": metavar, "flag": flag}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # what to train, on what
    data: str | None = _setting(None, str, "prepared data directory or s3:// URI (fer-ray prepare --output)", metavar="DIR")
    arch: str = _setting("classic", str, "architecture: classic, resnet, fastnet", metavar="NAME")
    arch_args: dict = _setting({}, dict, 'architecture arguments, e.g. \'{"widths": [32, 64, 128, 256]}\'', metavar="JSON")
    init: str | None = _setting(None, str, "start from this bundle's weights (fine-tuning); same arch and arch args",
                                metavar="BUNDLE")
    teacher: str | None = _setting(None, str, "distil from this bundle (local, s3:// or shipped name); needs --distill",
                                   metavar="BUNDLE")
    # the loop (loop.fit reads these)
    epochs: int = _setting(30, int, "epochs to train", metavar="N")
    batch_size: int = _setting(128, int, "global batch, split across workers", metavar="B")
    optimizer: str = _setting("sgd", str, "sgd = SGD with Nesterov momentum", choices=OPTIMIZERS)
    lr: float | None = _setting(None, float, "peak learning rate; default 0.05 (sgd) / 0.001 (adamw)")
    momentum: float = _setting(0.9, float, "SGD momentum", flag=False)
    weight_decay: float | None = _setting(None, float, "default 5e-4 (sgd) / 0.05 (adamw)", metavar="WD")
    schedule: str = _setting("cosine", str, "cosine (per step, linear warmup) or reduce on plateau", choices=SCHEDULES)
    warmup_epochs: float = _setting(1.0, float, "linear warmup of the cosine schedule", metavar="E")
    plateau_factor: float = _setting(0.5, float, "plateau schedule: LR factor when val accuracy stalls", flag=False)
    plateau_patience: int = _setting(3, int, "plateau schedule: epochs without a better val accuracy", flag=False)
    patience: int = _setting(0, int, "early stop after N epochs without a better val accuracy; 0 = off", metavar="N")
    label_smoothing: float = _setting(0.0, float, "label smoothing", metavar="EPS")
    balance: str = _setting("none", str, "class imbalance: class-weighted loss or class-balanced sampling", choices=BALANCE)
    soft_labels: bool = _setting(False, bool, "train on the FER+ vote distributions (needs prepared FER+ votes)")
    mixup: float = _setting(0.0, float, "mixup Beta alpha; 0 = off", metavar="ALPHA")
    cutmix: float = _setting(0.0, float, "CutMix Beta alpha; 0 = off", metavar="ALPHA")
    distill: float = _setting(0.0, float, "weight of the teacher's probabilities in the targets, 0..1; 0 = off", metavar="W")
    teacher_flip: bool = _setting(False, bool, "the teacher's probabilities averaged over each image and its mirror")
    augment: dict = _setting({}, "augment", 'augmentation strengths, e.g. \'{"rotate": 15, "erase": 0.5}\'; "none" = off',
                             metavar="JSON|none")
    amp: bool = _setting(True, bool, "bf16 autocast of the training step where bf16 is native (CUDA, CPUs with AMX)")
    eval_batch_size: int = _setting(512, int, "batch size of the per-epoch PublicTest evaluation", flag=False)
    seed: int = _setting(0, int, "seed of weights, shuffling and augmentation")
    # where and how it runs
    workers: int = _setting(2, int, "Ray Train workers; 0 = one process, no Ray", metavar="N")
    cpus_per_worker: int | None = _setting(None, int, "CPUs (= torch threads) per worker; default: cluster CPUs / workers",
                                           metavar="C")
    placement_strategy: str = _setting("PACK", str, "how Ray places the workers on nodes (STRICT_SPREAD: one per node)",
                                       choices=PLACEMENTS)
    gpu: bool = _setting(False, bool, "one GPU per worker")
    storage: str = _setting("runs", str, "where runs live; the run is <storage>/<name>; s3:// works", metavar="PATH_OR_S3_URI")
    name: str | None = _setting(None, str, "run name; the same name + storage resumes (default ARCH-TIMESTAMP)", metavar="RUN")
    max_failures: int = _setting(1, int, "worker-group restarts from the last checkpoint", metavar="N")
    checkpoints_to_keep: int = _setting(2, int, "checkpoints kept per run", metavar="K")
    half_weights: bool = _setting(False, bool, "store the bundle's weights as fp16 (half the size)")

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _typed(f, getattr(self, f.name)))
        if self.lr is None:
            self.lr = 0.05 if self.optimizer == "sgd" else 1e-3
        if self.weight_decay is None:
            self.weight_decay = 5e-4 if self.optimizer == "sgd" else 0.05
        try:
            self.augment = dict(aug.NONE) if self.augment is None else aug.resolve(self.augment)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.check()

    def check(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise UsageError(msg)

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.mixup >= 0 and self.cutmix >= 0, "mixup/cutmix alpha must be >= 0")
        need(0 <= self.distill <= 1, f"distill weight must be in [0, 1], got {self.distill}")
        need(self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        need(self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        need(0 < self.plateau_factor < 1, f"plateau factor must be in (0, 1), got {self.plateau_factor}")
        need(self.workers >= 0, f"workers must be >= 0 (0 = one process without Ray), got {self.workers}")
        need(self.max_failures >= 0 and self.checkpoints_to_keep >= 1,
             "max failures must be >= 0 and checkpoints to keep >= 1")
        need(self.cpus_per_worker is None or self.cpus_per_worker >= 1,
             f"cpus per worker must be >= 1, got {self.cpus_per_worker}")
        need(self.batch_size >= max(1, self.workers),
             f"batch size {self.batch_size} is smaller than the number of workers {self.workers}")
        need((self.distill > 0) == bool(self.teacher), "distillation needs both --teacher BUNDLE and --distill W > 0")
        need(self.name is None or bool(NAME_RE.match(self.name)),
             f"run name {self.name!r}: use letters, digits, '.', '_' and '-'")

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "TrainConfig":
        check_keys(values, where)
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


KEYS = tuple(f.name for f in fields(TrainConfig))


@dataclass
class LabelConfig:
    """How a labeling run labels (what it labels, SOURCE and DEST, are the job's). The fields with
    flag=False are measured tuning (benchmarks/bench_label.py): settable from Python and recorded
    in every run's marker like the rest, not on the command line."""

    model: str | None = _setting(None, str, "fast, accurate (the shipped models), a bundle folder or s3:// URI; "
                                 "default: fast on CPU, accurate with --gpu", metavar="BUNDLE")
    faces: str = _setting("auto", str, "auto: face crops framed like FER-2013 go in as they are, every face found in a "
                          "photo is aligned (a photo without one: a no-face row, no label); crop: each image is one "
                          "face; detect: only detected faces, one row each", choices=FACE_MODES)
    video_fps: float = _setting(2.0, float, "videos (.mp4 .avi .mov .mkv .webm): frames sampled per second, each a row "
                                "per face with frame_index and timestamp_s", metavar="F")
    incremental: bool = _setting(False, bool, "label only objects (key + ETag/size) not in a committed run under DEST")
    batch_size: int | None = _setting(None, int, "objects per batch, one labeling call in a worker (default: about "
                                      "2.5 s of work, 4096 face crops or 1024 photos)", metavar="N")
    workers: int | None = _setting(None, int, "labeling actors (default: one per CPU, or one per GPU with --gpu)",
                                   metavar="N")
    gpu: bool = _setting(False, bool, "run the model on GPUs (one actor per GPU)")
    ray: bool | None = _setting(None, bool, "label with a Ray actor pool (--ray) or in this process with the same code "
                                "(--no-ray); default: Ray for large runs, --workers, --gpu or a cluster (RAY_ADDRESS), "
                                "this process for runs small enough that starting Ray would cost more than it saves")
    lease_seconds: float = _setting(300.0, float, "one run at a time per DEST: a run holds DEST/_lease.json, renewed "
                                    "while it runs; a crashed run's lease blocks others for at most S seconds",
                                    metavar="S")
    tta: bool = _setting(False, bool, "test-time augmentation: mean over 10 views of each face (about 10x the model's work)")
    precision: str = _setting("auto", str, "auto: int8 on CPU when the model is calibrated for it, else fp32",
                              choices=PRECISIONS)
    run_id: str | None = _setting(None, str, "name the run (default: UTC time + random suffix)", metavar="ID")
    progress: bool = _setting(True, bool, "progress bars")
    # -- tuning, measured by benchmarks/bench_label.py (figures in docs/benchmarks.md)
    calls_per_actor: int = _setting(2, int, "batches in flight in one actor: one fetches while the other computes",
                                    flag=False)
    tasks_in_flight: int = _setting(4, int, "batches queued per actor by Ray Data", flag=False)
    cpu_fraction: float = _setting(0.9, float, "share of its CPUs an actor reserves: never all (a 2-core pool that "
                                   "holds every CPU hangs)", flag=False)
    forward_chunk: int = _setting(64, int, "faces per forward call in a 1-thread actor on CPU (cache-friendly)",
                                  flag=False)
    batch_here: int = _setting(256, int, "faces per forward call when labeling in this process with every core",
                               flag=False)
    blocks_here: int = _setting(16, int, "... and at least this many blocks in a run there", flag=False)
    model_threads_here: int = _setting(2, int, "... and forward passes at once there (one per core at most; GPU: one)",
                                       flag=False)
    fetch_threads: int = _setting(16, int, "GETs or local reads in flight per batch", flag=False)
    freeze_min_images: int = _setting(20_000, int, "TorchScript for the CPU model from this many images per actor or "
                                      "process on (less CPU an image, but seconds of CPU to compile: docs/labeling.md, "
                                      "How it is built)", flag=False)
    in_process_seconds: float = _setting(30.0, float, "a run goes to Ray when its estimated work here exceeds this "
                                         "(what starting Ray and a pool costs: docs/benchmarks.md, Command line, end to end)",
                                         flag=False)
    seconds_per_object: dict = _setting({"crop": 0.0006, "auto": 0.01, "detect": 0.01, "video": 5.0}, dict,
                                        "estimated labeling seconds of one object here, per faces mode", flag=False)
    auto_crop_bytes: int = _setting(64 << 10, int, "in auto, objects this small are most likely face crops, which "
                                    "the framer reads (no detector) ...", flag=False)
    seconds_per_auto_crop: float = _setting(0.0008, float, "... at about this many seconds each", flag=False)

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _typed(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise UsageError(msg)

        need(self.batch_size is None or self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        need(self.workers is None or self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        need(0 < self.video_fps <= 240, f"video fps must be in (0, 240], got {self.video_fps}")
        need(self.lease_seconds > 0, f"lease seconds must be > 0, got {self.lease_seconds}")
        need(0 < self.cpu_fraction <= 1, f"cpu fraction must be in (0, 1], got {self.cpu_fraction}")
        need(min(self.calls_per_actor, self.tasks_in_flight, self.forward_chunk, self.batch_here, self.blocks_here,
                 self.model_threads_here, self.fetch_threads) >= 1, "tuning counts must be >= 1")
        if self.run_id is not None:
            from .runs import check_run_id

            try:
                check_run_id(self.run_id)
            except ValueError as exc:
                raise UsageError(str(exc)) from None

    def to_dict(self) -> dict:
        return asdict(self)


def settings(table=TrainConfig):
    """(name, default, kind, help, choices, metavar, flag) of every setting, in table order."""
    for f in fields(table):
        default = f.default_factory() if f.default is MISSING else f.default
        m = f.metadata
        yield f.name, default, m["kind"], m["help"], m["choices"], m["metavar"], m["flag"]


def check_keys(values, where: str) -> None:
    if not isinstance(values, dict):
        raise UsageError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")


def _typed(f, value):
    """The value as its setting's type, or a one-line error (YAML and JSON give ints for floats)."""
    kind, name = f.metadata["kind"], f.name.replace("_", " ")
    optional = f.default is None
    if value is None and (optional or kind == "augment"):
        return None
    if kind == "augment":
        if value is False or (isinstance(value, str) and value.strip().lower() in ("none", "off", "false")):
            return None
        kind = dict
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[kind]
    if not ok:
        raise UsageError(f"{name} must be {_KIND_WORDS[kind]}, got {value!r}")
    if kind is dict:
        return copy.deepcopy(value)
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        raise UsageError(f"{name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
    return float(value) if kind is float else value


_KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
