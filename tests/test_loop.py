import numpy as np
import pytest
import torch
from torch import nn

from fer_ray import loop, models

TINY = {"widths": (8, 8, 16, 16)}


pytestmark = pytest.mark.usefixtures("one_thread")


def separable(n: int, seed: int):
    """48x48 images whose brightness gives away the class: a tiny CNN learns it in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    pixels = np.clip(rng.normal(20 + 33 * labels[:, None, None], 12, (n, 48, 48)), 0, 255).astype(np.uint8)
    votes = np.eye(7, dtype=np.float32)[labels] * 8 + 0.25
    return pixels, labels, votes


class Recorder:
    def __init__(self):
        self.metrics, self.states = [], []

    def report(self, metrics, state):
        self.metrics.append(dict(metrics))
        self.states.append({k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()})


def batches(n_train=192, n_val=96, batch_size=32, **kw):
    px, y, v = separable(n_train, 0)
    vpx, vy, _ = separable(n_val, 1)
    return loop.ArrayBatches(px, y, v, batch_size=batch_size, shuffle=True, **kw), loop.ArrayBatches(vpx, vy, batch_size=64)


def test_fit_learns_a_separable_problem_and_keeps_the_best_weights():
    torch.manual_seed(0)
    model = models.build("fastnet", **TINY)
    tb, vb = batches(batch_size=16)
    before = loop.loss_and_accuracy(model, vb)
    rec = Recorder()
    out = loop.fit(model, tb, vb, {"epochs": 4, "augment": None, "warmup_epochs": 0}, rec)
    hist = out["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and len(rec.metrics) == 4
    assert set(loop.HISTORY_KEYS) <= set(hist[0])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.3
    assert out["best"]["val_acc"] > max(0.5, before["accuracy"] + 0.25), (before, hist)
    # the kept weights really are the best epoch's: evaluating them gives its val accuracy
    best_model = models.build("fastnet", **TINY)
    best_model.load_state_dict(out["best"]["model"])
    again = loop.loss_and_accuracy(best_model, vb)
    assert again["accuracy"] == pytest.approx(out["best"]["val_acc"])
    assert out["best"]["val_acc"] == max(h["val_acc"] for h in hist)


class AlwaysAngry(torch.nn.Module):
    """A 'teacher' sure that every face is class 0, whatever it sees."""

    def forward(self, x):
        return torch.tensor([12.0] + [0.0] * 6).expand(len(x), 7)


def test_distillation_pulls_the_student_towards_the_teacher():
    tb, vb = batches(batch_size=16)
    cfg = {"epochs": 3, "augment": None, "warmup_epochs": 0}
    torch.manual_seed(0)
    free = loop.fit(models.build("fastnet", **TINY), tb, vb, cfg, Recorder())
    torch.manual_seed(0)
    student = models.build("fastnet", **TINY)
    taught = loop.fit(student, tb, vb, {**cfg, "distill": 1.0, "teacher": "always-angry"}, Recorder(), teacher=AlwaysAngry())
    # with the labels weighted 0, the student learns the teacher's answer, not the problem
    with torch.no_grad():
        x = torch.cat([loop._inputs(px, torch.device("cpu")) for px, _, _ in vb])
        preds = student.eval()(x).argmax(1)
    assert (preds == 0).float().mean() > 0.9
    assert free["best"]["val_acc"] > 0.5 and taught["history"][-1]["val_acc"] < 0.35
    with pytest.raises(ValueError, match="needs a teacher"):
        loop.fit(models.build("fastnet", **TINY), tb, vb, {**cfg, "distill": 0.5, "teacher": "a bundle not loaded"}, Recorder())


def test_the_teacher_is_asked_about_the_students_mixed_input():
    seen = {"teacher": [], "student": []}

    class Spy(nn.Module):
        def __init__(self, who, inner=None):
            super().__init__()
            self.who, self.inner = who, inner

        def forward(self, x):
            if self.training or self.who == "teacher":
                seen[self.who].append(x.detach().clone())
            return self.inner(x) if self.inner is not None else torch.zeros(len(x), 7)

    torch.manual_seed(0)
    tb, vb = batches(n_train=64)
    student = Spy("student", models.build("fastnet", **TINY))
    cfg = {"epochs": 1, "augment": None, "mixup": 1.0, "cutmix": 1.0, "distill": 0.5, "teacher": "spy"}
    loop.fit(student, tb, vb, cfg, Recorder(), teacher=Spy("teacher").eval())
    assert len(seen["teacher"]) == len(seen["student"]) == len(tb)
    assert all(torch.equal(a, b) for a, b in zip(seen["teacher"], seen["student"]))


def test_fit_options_run_together():
    """Soft labels, smoothing, class weights, mixup+cutmix, AdamW, plateau: one epoch, finite loss."""
    torch.manual_seed(0)
    model = models.build("classic", widths=(8, 16), hidden=16)
    tb, vb = batches(n_train=64)
    cfg = {"epochs": 1, "optimizer": "adamw", "schedule": "plateau", "soft_labels": True, "label_smoothing": 0.1,
           "balance": "weights", "mixup": 0.2, "cutmix": 1.0}
    out = loop.fit(model, tb, vb, cfg, Recorder())
    assert np.isfinite(out["history"][0]["train_loss"]) and out["history"][0]["lr"] == pytest.approx(1e-3)


def test_resume_continues_after_the_saved_epoch():
    tb, vb = batches(n_train=64)
    cfg = {"epochs": 1, "augment": None}
    torch.manual_seed(0)
    first = Recorder()
    loop.fit(models.build("fastnet", **TINY), tb, vb, cfg, first)
    state = first.states[-1]
    torch.manual_seed(123)  # a fresh model: everything must come from the state
    second = Recorder()
    out = loop.fit(models.build("fastnet", **TINY), tb, vb, {**cfg, "epochs": 2}, second, start_state=state)
    assert out["epochs_run"] == 1 and [m["epoch"] for m in second.metrics] == [2]
    assert [h["epoch"] for h in out["history"]] == [1, 2]
    # a state whose run has finished trains nothing
    done = loop.fit(models.build("fastnet", **TINY), tb, vb, {**cfg, "epochs": 2}, Recorder(), second.states[-1])
    assert done["epochs_run"] == 0


def test_early_stopping_on_a_stalled_val_accuracy():
    # no BatchNorm and a vanishing LR: predictions never change, so val accuracy never improves
    model = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7))
    tb, vb = batches(n_train=64)
    rec = Recorder()
    out = loop.fit(model, tb, vb, {"epochs": 10, "lr": 1e-12, "patience": 2, "augment": None}, rec)
    assert [m["epoch"] for m in rec.metrics] == [1, 2, 3]
    assert out["stopped_early"] and rec.metrics[-1]["stopped_early"] and out["best"]["epoch"] == 1


def test_rank_shards_are_disjoint_equal_and_reshuffled():
    px, y, _ = separable(101, 0)
    shards = [loop.ArrayBatches(px, y, batch_size=10, shuffle=True, rank=r, world=2, seed=5) for r in range(2)]
    seen = []
    for b in shards:
        b.set_epoch(1)
        seen.append(b._indices().tolist())
        assert sum(len(by) for _, by, _ in b) == 50
    assert len(seen[0]) == len(seen[1]) == 50 and not set(seen[0]) & set(seen[1])
    assert len(shards[0]) == len(shards[1]) == 5
    shards[0].set_epoch(2)
    assert shards[0]._indices().tolist() != seen[0]
    # evaluation shards cover every row exactly once
    ev = [loop.ArrayBatches(px, y, batch_size=16, rank=r, world=2) for r in range(2)]
    assert sorted(torch.cat([i._indices() for i in ev]).tolist()) == list(range(101))


def test_balanced_sampling_and_class_weights():
    y = np.array([0] * 90 + [1] * 10)
    px = np.zeros((100, 48, 48), np.uint8)
    b = loop.ArrayBatches(px, y, batch_size=100, shuffle=True, balanced=True)
    drawn = torch.cat([by for _ in range(20) for _, by, _ in b])
    share = (drawn == 1).float().mean().item()
    assert 0.4 < share < 0.6, share
    w = loop.class_weights([90, 10, 0, 0, 0, 0, 0])
    assert w[0].item() == pytest.approx(100 / (2 * 90)) and w[1].item() == pytest.approx(100 / (2 * 10))
    assert w[2].item() == 0


def test_targets_soft_votes_and_smoothing():
    y = torch.tensor([0, 3])
    votes = torch.tensor([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 6, 0, 2, 2]], dtype=torch.float32)
    t = loop.targets_for(y, votes, soft=True, smoothing=0.0)
    assert t[0].tolist() == [1, 0, 0, 0, 0, 0, 0]  # no votes: falls back to the label
    assert t[1].tolist() == pytest.approx([0, 0, 0, 0.6, 0, 0.2, 0.2])
    s = loop.targets_for(y, None, soft=False, smoothing=0.7)
    assert s[0, 0].item() == pytest.approx(0.3 + 0.1) and s[0, 1].item() == pytest.approx(0.1)
    logits = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0]])
    want = -torch.log_softmax(logits, 1)[0, 0]
    assert loop.soft_cross_entropy(logits, t[:1]).item() == pytest.approx(want.item())



def test_teacher_flip_averages_the_teacher_over_the_mirror_image():
    class LeftBright(nn.Module):  # class 0 when the left half is brighter, class 1 otherwise
        def forward(self, x):
            d = (x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2 :].mean((1, 2, 3))) * 50
            return torch.stack([d, -d] + [torch.full_like(d, -50.0)] * 5, 1)

    x = torch.zeros(2, 1, 8, 8)
    x[0, ..., :4] = 1.0  # left bright: the teacher is sure of class 0, and of 1 on the mirror
    t = torch.zeros(2, 7)
    plain = loop.teacher_targets(LeftBright(), x, t, 1.0, amp=False)
    both = loop.teacher_targets(LeftBright(), x, t, 1.0, amp=False, flip=True)
    assert plain[0, 0] > 0.99 and both[0, :2].tolist() == pytest.approx([0.5, 0.5], abs=1e-3)
    assert torch.allclose(both.sum(1), torch.ones(2))
