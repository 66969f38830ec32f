"""The training loop: plain PyTorch, no Ray. `fit()` runs epochs and talks to a reporter.

    fit(model, train_batches, val_batches, config, reporter, start_state=None) -> dict

- `model` is already on its device (and wrapped in DDP when distributed; `to_device()` sets
  channels-last on CUDA). The loop reads the device from the model's parameters.
- `train_batches` / `val_batches` are iterables of (pixels uint8 (B,48,48), labels int64 (B,),
  votes float32 (B,7) or None); `ArrayBatches` is the in-memory implementation (whole split as one
  uint8 tensor, optionally on the GPU; per-epoch permutation, rank-strided shards). The training
  batches may offer `set_epoch(epoch)` (reshuffle) and `class_counts()` (for balance=weights).
- Inputs go through `preprocess.normalize` — the one preprocessing path — and are augmented after
  it (training only).
- When torch.distributed is initialised, per-epoch metrics are summed over all ranks, and every
  rank calls `reporter.report(metrics, state)` once per epoch; `state` holds everything needed to
  resume (model/optimizer/scheduler state dicts, epoch, best weights, history, early-stop count).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import augment as aug
from .config import TrainConfig
from .emotions import NUM_CLASSES
from .preprocess import normalize

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


class ArrayBatches:
    """One split in memory as batches. Shuffled ones draw a new permutation per epoch (the same on
    every rank, from seed+epoch) and each rank takes every world-th index of it, truncated to an
    equal count so all ranks run the same number of steps (DDP needs that). Unshuffled ones
    (evaluation) give each rank its strided share of every row exactly once."""

    def __init__(
        self,
        pixels,
        labels,
        votes=None,
        batch_size: int = 128,
        shuffle: bool = False,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        balanced: bool = False,
        device: str | torch.device = "cpu",
    ):
        px = np.asarray(pixels)
        if not px.flags.writeable:
            px = px.copy()  # arrays straight from Arrow are read-only; torch wants writable memory
        self.pixels = torch.as_tensor(px, dtype=torch.uint8).to(device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        self.votes = None if votes is None else torch.as_tensor(np.asarray(votes), dtype=torch.float32).to(device)
        self.batch_size, self.shuffle, self.rank, self.world = int(batch_size), shuffle, rank, world
        self.seed, self.balanced, self.epoch = seed, balanced, 0
        n = len(self.labels)
        if shuffle:
            self.per_rank = n // world
            # drop a last partial batch (BatchNorm cannot train on one sample), unless it is all we have
            self.steps = max(1, self.per_rank // self.batch_size)
            self.per_rank_used = min(self.per_rank, self.steps * self.batch_size)
        else:
            self.per_rank = len(range(rank, n, world))
            self.steps = math.ceil(self.per_rank / self.batch_size)
        self._sample_weights = None
        if balanced:
            counts = torch.bincount(self.labels.cpu(), minlength=NUM_CLASSES).clamp(min=1).double()
            self._sample_weights = (1.0 / counts)[self.labels.cpu()]

    def __len__(self) -> int:
        return self.steps

    def class_counts(self) -> np.ndarray:
        return torch.bincount(self.labels.cpu(), minlength=NUM_CLASSES).numpy()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self._sample_weights is not None:
            order = torch.multinomial(self._sample_weights, n, replacement=True, generator=g)
        else:
            order = torch.randperm(n, generator=g)
        return order[self.rank :: self.world][: self.per_rank_used]

    def __iter__(self):
        idx = self._indices().to(self.pixels.device)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            yield self.pixels[b], self.labels[b], (None if self.votes is None else self.votes[b])


def to_device(model: torch.nn.Module, device) -> torch.nn.Module:
    """Move a model to its device, channels-last: the fast conv layout for oneDNN (CPU) and bf16 (CUDA)."""
    return model.to(torch.device(device)).to(memory_format=torch.channels_last)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_sum(values: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        torch.distributed.all_reduce(values)
    return values


def _inputs(px: torch.Tensor, device: torch.device) -> torch.Tensor:
    return normalize(px.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


def bf16_native(device: torch.device) -> bool:
    """CUDA, or a CPU with AMX tiles: there bf16 matmuls and convolutions run faster than fp32
    (docs/benchmarks.md, "bf16 on CPUs with AMX"); AVX2-only CPUs emulate bf16, slower than fp32,
    so they stay in fp32."""
    if device.type == "cuda":
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def _autocast(device: torch.device, enabled: bool):
    """For the training step. Evaluation on CPU stays fp32, so selection and reported figures do not
    depend on which CPU ran them."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and bf16_native(device))


def _eval_autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def class_weights(counts) -> torch.Tensor:
    """n / (K * n_c): a class's total weight is the same for every class (absent classes get 0)."""
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    present = counts > 0
    w = torch.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def targets_for(labels: torch.Tensor, votes: torch.Tensor | None, soft: bool, smoothing: float) -> torch.Tensor:
    """(N, K) target distributions: one-hot labels, or the normalised FER+ votes (rows without
    votes fall back to one-hot), then label smoothing."""
    t = F.one_hot(labels, NUM_CLASSES).float()
    if soft and votes is not None:
        total = votes.sum(1, keepdim=True)
        t = torch.where(total > 0, votes / total.clamp(min=1e-8), t)
    if smoothing > 0:
        t = t * (1.0 - smoothing) + smoothing / NUM_CLASSES
    return t


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None):
    per_sample = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.sum().clamp(min=1e-8)


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, batches, amp: bool = True) -> dict:
    """Plain cross-entropy and accuracy on hard labels, summed over ranks. Uses the unwrapped model
    (a DDP forward would sync buffers, and ranks may hold different numbers of eval batches)."""
    net = unwrap(model)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    for px, y, _ in batches:
        y = y.to(device)
        with _eval_autocast(device, amp):
            logits = net(_inputs(px, device))
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    net.train(was_training)
    loss, correct, count = _all_sum(sums).tolist()
    return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1), "count": int(count)}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on BatchNorm/bias parameters (1-D tensors)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """cosine: stepped every batch (linear warmup, then cosine to 0); plateau: stepped every epoch."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def teacher_targets(teacher, x: torch.Tensor, t: torch.Tensor, weight: float, amp: bool,
                    flip: bool = False) -> torch.Tensor:
    """Knowledge distillation: blend the teacher's probabilities on exactly the student's input
    (augmented, then mixed by mixup/CutMix) into the targets. Asking the teacher about the mixed
    image rather than mixing its answers on the two originals matches the two functions on a wider
    set of inputs ("function matching", Beyer et al. 2022). `flip`: averaged with its
    probabilities on the mirror image, a better teacher for one more forward pass."""
    with torch.no_grad(), _eval_autocast(x.device, amp):
        probs = torch.softmax(teacher(x).float(), dim=1)
        if flip:
            probs = (probs + torch.softmax(teacher(torch.flip(x, dims=[3])).float(), dim=1)) / 2
    return (1.0 - weight) * t + weight * probs


def fit(model, train_batches, val_batches, config, reporter, start_state: dict | None = None, teacher=None) -> dict:
    """Train `model` and return {"history", "best", "epochs_run", "stopped_early"}.

    `best` = {"epoch", "val_acc", "val_loss", "model": CPU state dict of the best-val-acc weights}.
    `config` is a config.TrainConfig (or a dict of its fields); the loop reads its training
    settings. `reporter.report(metrics, state)` is called once per epoch on every rank. With `start_state` (a state from an earlier report) training
    continues after that state's epoch, with its optimizer, schedule, best weights and history.
    `teacher` (an eval-mode model on the same device) is needed when config.distill > 0."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    if cfg.distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs a teacher model")
    device = next(model.parameters()).device
    rank, _ = _world()
    net = unwrap(model)
    steps_per_epoch = len(train_batches)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    per_step = cfg.schedule == "cosine"

    weights_by_class = None
    if cfg.balance == "weights":
        weights_by_class = class_weights(train_batches.class_counts()).to(device)

    history: list[dict] = []
    best = {"epoch": 0, "val_acc": -1.0, "val_loss": float("inf"), "model": _cpu_copy(net.state_dict())}
    bad_epochs, first_epoch, stopped = 0, 1, False
    if start_state:
        net.load_state_dict(start_state["model"])
        optimizer.load_state_dict(start_state["optimizer"])
        scheduler.load_state_dict(start_state["scheduler"])
        history = list(start_state.get("history", []))
        best = dict(start_state["best"])
        bad_epochs = int(start_state.get("bad_epochs", 0))
        stopped = bool(start_state.get("stopped", False))
        first_epoch = int(start_state["epoch"]) + 1

    epochs_run = 0
    for epoch in range(first_epoch, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        # per-epoch seeds: a resumed run draws the same augmentations as an uninterrupted one
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss*n, correct, n
        lr = optimizer.param_groups[0]["lr"]
        for px, y, votes in train_batches:
            y = y.to(device, non_blocking=True)
            x = _inputs(px, device)
            x = aug.augment(x, cfg.augment)
            t = targets_for(y, None if votes is None else votes.to(device), cfg.soft_labels, cfg.label_smoothing)
            w = weights_by_class[y] if weights_by_class is not None else torch.ones(len(y), device=device)
            x, t, w = aug.mix(x, t, w, cfg.mixup, cfg.cutmix)
            if cfg.distill > 0:  # on the mixed images: the student learns the teacher's function there too
                t = teacher_targets(teacher, x, t, cfg.distill, cfg.amp, cfg.teacher_flip)
            with _autocast(device, cfg.amp):
                logits = model(x)
            loss = soft_cross_entropy(logits, t, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step ran with (logged: the epoch's last)
            if per_step:
                scheduler.step()
            sums[0] += loss.detach() * len(y)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += len(y)
        train_loss, train_correct, train_n = _all_sum(sums).tolist()
        val = loss_and_accuracy(model, val_batches, cfg.amp)
        if not per_step:
            scheduler.step(val["accuracy"])
        if val["accuracy"] > best["val_acc"]:
            best = {"epoch": epoch, "val_acc": val["accuracy"], "val_loss": val["loss"], "model": _cpu_copy(net.state_dict())}
            bad_epochs = 0
        else:
            bad_epochs += 1
        stopped = cfg.patience > 0 and bad_epochs >= cfg.patience
        row = {
            "epoch": epoch,
            "train_loss": train_loss / max(train_n, 1),
            "train_acc": train_correct / max(train_n, 1),
            "val_loss": val["loss"],
            "val_acc": val["accuracy"],
            "lr": lr,
            "time_s": time.perf_counter() - t0,
        }
        history.append(row)
        epochs_run += 1
        metrics = {**row, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "stopped_early": stopped}
        state = {
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best,
            "history": history,
            "bad_epochs": bad_epochs,
            "stopped": stopped,
        }
        reporter.report(metrics, state)
    return {"history": history, "best": best, "epochs_run": epochs_run, "stopped_early": stopped}
