"""Training throughput on the prepared FER-2013 data: plain torch vs Ray Train at equal total threads.

    .venv/bin/python benchmarks/bench_train.py [DATA_DIR] [--config configs/member-cpu.yaml]
        [--arch classic] [--batch-size 128] [--steps 25] [--repeats 3] [--modes plain,plain-fp32,...]

Each mode runs the real training loop (loop.fit with the recipe of `--config`, or the defaults:
its augmentation, optimizer and schedule included) for `repeats` epochs of `steps` steps at a
global batch of `--batch-size` over the real Training split:

  plain       one process, no Ray, torch.set_num_threads(2), the recipe's precision (amp: bf16
              autocast where native: CUDA, CPUs with AMX; fp32 elsewhere)
  plain-fp32  the same with amp off: what bf16 buys on this CPU
  ray-1x2     Ray Train, 1 worker with 2 CPUs (2 threads)
  ray-2x1     Ray Train, 2 workers with 1 CPU each (DDP over gloo), half the batch each
  plain-1t    (reference) one process, no Ray, 1 thread: separates "1 vs 2 threads" from "Ray"

Images/s per epoch are timed from the second step to the end of the last (the first step of each
epoch warms up), and the median over epochs is printed, with the ratio to `plain` measured in the
same run (the machine may be shared: compare ratios, not absolute figures across runs). Images per
CPU-second (process CPU time of the training processes over the same steps) shows the cost apart
from contention: on a busy machine a 2-thread process loses far more wall time than its CPU time
says, as its threads wait for each other at every parallel region. Peak
memory is sampled every 0.2 s as RSS summed over this process and all its descendants (Ray's own
processes included: raylet, GCS, workers, ...), and separately for the training processes.
RSS counts pages shared between processes once per process, so the sums are upper bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import threading
import time

import ray  # noqa: F401  (also puts the psutil that Ray bundles on sys.path)
import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_ray import data, loop, models, train  # noqa: E402
from figures import write as write_figures  # noqa: E402  (benchmarks/figures.py)


class Timed:
    """Wraps training batches: only `steps` batches per epoch, and the time each one is handed out."""

    def __init__(self, inner, steps: int):
        self.inner, self.steps, self.epochs = inner, steps, []

    def __len__(self):
        return min(self.steps, len(self.inner))

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)

    def class_counts(self):
        return self.inner.class_counts()

    def __iter__(self):
        stamps, cpu, images = [], [], 0
        for i, batch in enumerate(self.inner):
            if i >= self.steps:
                break
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if i > 0:
                images += len(batch[1])
            yield batch
        stamps.append(time.perf_counter())  # the last step has finished
        cpu.append(time.process_time())
        # (images, wall seconds, CPU seconds of this process) from the second step to the end
        self.epochs.append((images, stamps[-1] - stamps[1], cpu[-1] - cpu[1]))


class Quiet:
    def report(self, metrics, state):
        pass


def _batches(cfg, rank, world, device, steps):
    tb, vb = train.make_batches(cfg, rank, world, device)
    # a token validation pass: the benchmark is about training steps
    vb = loop.ArrayBatches(vb.pixels[:256].cpu().numpy(), vb.labels[:256].cpu().numpy(), batch_size=256,
                           rank=rank, world=world, device=device)
    return Timed(tb, steps), vb


def run_plain(cfg, steps, threads):
    torch.set_num_threads(threads)
    tb, vb = _batches(cfg, 0, 1, "cpu", steps)
    model = train.build_model(cfg, "cpu")
    loop.fit(model, tb, vb, cfg, Quiet())
    return [(images / wall, images / cpu) for images, wall, cpu in tb.epochs]


def _ray_worker(c):
    import ray.train
    import ray.train.torch

    cfg, steps = c["cfg"], c["steps"]
    ctx = ray.train.get_context()
    torch.set_num_threads(cfg.cpus_per_worker)

    class Report:
        def report(self, metrics, state):
            ray.train.report({"epoch": metrics["epoch"]})

    tb, vb = _batches(cfg, ctx.get_world_rank(), ctx.get_world_size(), "cpu", steps)
    model = ray.train.torch.prepare_model(train.build_model(cfg, "cpu"))
    loop.fit(model, tb, vb, cfg, Report())
    # ranks move in lock step (DDP all-reduce every step), so rank 0's clock is the group's;
    # images and CPU seconds are summed over the ranks
    sums = torch.tensor([[images, cpu] for images, _, cpu in tb.epochs], dtype=torch.float64)
    if ctx.get_world_size() > 1:
        torch.distributed.all_reduce(sums)
    return [(images / wall, images / cpu) for (images, cpu), (_, wall, _) in zip(sums.tolist(), tb.epochs)]


def run_ray(cfg, steps, workers, cpus, storage):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = dataclasses.replace(cfg, cpus_per_worker=cpus)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg, "steps": steps},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"bench-{workers}x{cpus}-{int(time.time())}", storage_path=storage),
    )
    return trainer.fit().return_value


class PeakRSS:
    """Samples RSS of this process tree; `train` = this process + Ray Train workers only."""

    def __init__(self):
        self.total = self.train = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = training = me.memory_info().rss
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    total += rss
                    if "RayTrainWorker" in " ".join(p.cmdline()[:1]):
                        training += rss
                except psutil.Error:
                    continue
            self.total, self.train = max(self.total, total), max(self.train, training)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="data/fer2013")
    ap.add_argument("--config", metavar="FILE.yaml", help="a training recipe (configs/*.yaml); default: the defaults")
    ap.add_argument("--arch", help="overrides the recipe's")
    ap.add_argument("--batch-size", type=int, help="overrides the recipe's (default 128)")
    ap.add_argument("--steps", type=int, default=25, help="steps per measured epoch")
    ap.add_argument("--repeats", type=int, default=3, help="measured epochs per mode (median)")
    ap.add_argument("--modes", default="plain,plain-fp32,plain-1t,ray-1x2,ray-2x1")
    ap.add_argument("--json", metavar="OUT.json", help="also write the figures (with the machine and its load) here")
    args = ap.parse_args()

    import tempfile

    store = tempfile.mkdtemp(prefix="bench-train-")
    recipe = train.read_config_file(args.config) if args.config else {}
    cfg = train.resolve(recipe, {"data": args.data, "arch": args.arch, "batch_size": args.batch_size,
                                 "epochs": args.repeats, "storage": store, "name": "bench", "init": None})
    n = len(data.load_split(args.data, "Training"))
    params = models.count_params(models.build(cfg.arch, **cfg.arch_args))
    print(f"data {args.data}: {n} training images; {args.config or 'default recipe'}: arch {cfg.arch} "
          f"{cfg.arch_args or ''} ({params / 1e6:.2f} M params); global batch {cfg.batch_size}; "
          f"{args.repeats} x {args.steps} steps per mode; torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"bf16 native: {loop.bf16_native(torch.device('cpu'))}", flush=True)

    results = {}
    figures = {"recipe": args.config or "defaults", "arch": cfg.arch, "arch_args": cfg.arch_args,
               "params": params, "batch_size": cfg.batch_size, "steps": args.steps, "repeats": args.repeats,
               "cores": os.cpu_count(), "bf16_native": loop.bf16_native(torch.device("cpu")),
               "load_before": round(os.getloadavg()[0], 2), "torch": torch.__version__, "modes": {}}
    for mode in args.modes.split(","):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            if mode.startswith("plain"):
                mode_cfg = dataclasses.replace(cfg, amp=False) if mode == "plain-fp32" else cfg
                rates = run_plain(mode_cfg, args.steps, threads=1 if mode == "plain-1t" else 2)
            else:
                if not ray.is_initialized():
                    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                             _temp_dir=os.path.join(store, "ray"))
                workers, cpus = (int(v) for v in mode.split("-")[1].split("x"))
                rates = run_ray(cfg, args.steps, workers, cpus, store)
            wall = time.perf_counter() - t0
        speed = statistics.median(r for r, _ in rates)
        per_cpu = statistics.median(c for _, c in rates)
        results[mode] = speed
        figures["modes"][mode] = {"img_per_s": round(speed, 1), "img_per_cpu_s": round(per_cpu, 1),
                                  "epochs": [round(r, 1) for r, _ in rates]}
        ratio = speed / results["plain"] if "plain" in results else float("nan")
        print(f"{mode:9s} {speed:7.1f} img/s (median of {', '.join(f'{r:.0f}' for r, _ in rates)})  "
              f"x{ratio:.2f} vs plain  {per_cpu:6.1f} img per CPU-second  peak RSS {mem.total / 2**30:.2f} GiB "
              f"total, {mem.train / 2**30:.2f} GiB driver+train workers  wall {wall:.0f}s", flush=True)


    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
