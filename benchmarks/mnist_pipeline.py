"""Benchmark: the article's MNIST pipeline against the package's, and the time to 99 % (and 99.5 %).

Everything is measured in one run, on the current device (``COMPANION_DEVICE`` or the best
available), and each figure is repeated (``--repeats``, default 3); the table gives the median
and the JSON record min, median and every value.

**Same math as the article** (SeedCNN's function, SGD lr 0.001 momentum 0.9, batch 64, pixels
normalised to mean 0.5, std 0.5), seconds per epoch of training steps:

1. ``article``: the article's pipeline — torchvision ``DataLoader`` (PIL → tensor → normalise,
   per image) and the article's layer order (ReLU, then max-pool), NCHW;
2. ``+ DeviceLoader``: the package's loader (the split normalised once, on the device);
3. ``+ channels_last``: the same network with NHWC memory layout (model and batches);
4. ``+ pool before ReLU``: max-pool, then ReLU — the same values and gradients, bit for bit
   (they commute; ``tests/test_cnn.py``), on 4× fewer values: ``SeedCNN``'s own order;
5. the ratio of each row to the article's.

None of rows 2–4 changes a number the network computes, only where it is computed, its memory
layout or the order of two exactly commuting operations.

**Time to accuracy**: training seconds (``History.total_seconds``: steps only) of a recipe,
over ``--seeds`` seeds, for the mean test accuracy to reach 99 % (``FAST``) and 99.5 %
(``IMPROVED`` with more epochs); the spread over seeds is reported. On CUDA a further row trains
the FAST recipe as one captured CUDA graph per step (static shapes, data on the device, the
learning-rate schedule precomputed on the device, no host synchronisation inside an epoch).

Usage::

    COMPANION_DATA_DIR=/path/to/data python benchmarks/mnist_pipeline.py [--batches N] [--repeats R]
        [--seeds S] [--json PATH] [--skip-995]

The JSON record (default ``benchmarks/results/mnist_pipeline-<host>-<time>.json``) holds the
machine, Python, PyTorch, threads, device and every figure, so runs on different machines can be
compared. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T

import companion
from companion.recipes import FAST, IMPROVED, PRECISIONS, build_model
from companion.utils import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def seconds_per_epoch(loader, num_batches: int, device: torch.device, *, article_order: bool,
                      channels_last: bool) -> float:  # fmt: skip
    """Train a fresh SeedCNN (SGD lr 0.001, momentum 0.9) on ``num_batches`` batches; scale to one epoch."""
    companion.seed_everything(0)
    model = companion.SeedCNN(article_order=article_order).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    batches = iter(loader)
    with companion.Timer(device) as timer:
        for _ in range(num_batches):
            x, y = next(batches)
            x, y = x.to(device).contiguous(memory_format=layout), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return timer.seconds / num_batches * len(loader)


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def pipeline_rows(split, device, num_batches: int, repeats: int) -> dict[str, dict]:
    """Seconds per epoch of the five same-math variants, ``repeats`` times each, interleaved."""
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    dataset = torchvision.datasets.MNIST(root=companion.data_root(), train=True, transform=transform)
    article = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    fast = companion.DeviceLoader(split.images, split.labels, 64, shuffle=True, mean=0.5, std=0.5, device=device)
    variants = {
        "article": (article, True, False),
        "+ DeviceLoader": (fast, True, False),
        "+ channels_last": (fast, True, True),
        "+ pool before ReLU (SeedCNN)": (fast, False, True),
        "DeviceLoader + pool before ReLU, NCHW": (fast, False, False),
    }
    seconds_per_epoch(fast, min(50, num_batches), device, article_order=False, channels_last=True)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so that a slow moment of the machine hits every variant
        for name, (loader, article_order, channels_last) in variants.items():
            times[name].append(seconds_per_epoch(loader, num_batches, device, article_order=article_order,
                                                 channels_last=channels_last))  # fmt: skip
    return {name: summary(values) for name, values in times.items()}


def time_to_accuracy(config, seeds: int, device, target: float) -> dict:
    """Train ``config`` with seeds 0..seeds-1; training seconds and test accuracy of each."""
    companion.run_recipe(dataclasses.replace(config, epochs=1), device=device, progress=False)  # warm-up
    seconds, accuracy = [], []
    for seed in range(seeds):
        result = companion.run_recipe(dataclasses.replace(config, seed=seed), device=device, progress=False)
        seconds.append(result.history.total_seconds)
        accuracy.append(result.test.accuracy)
    return {"config": dataclasses.asdict(config), "target": target, "seconds": summary(seconds),
            "accuracy": summary(accuracy), "mean_accuracy": statistics.mean(accuracy),
            "reached": statistics.mean(accuracy) >= target}  # fmt: skip


def fast_cuda_graph(config, seed: int, device: torch.device) -> dict:
    """The FAST recipe with every training step replayed from one captured CUDA graph.

    Static shapes (``drop_last=True``), the split on the device, AdamW with ``capturable=True``
    and a learning-rate tensor that each replay reads from the one-cycle schedule precomputed
    on the device; the loss is checked once, after the epoch. CUDA only.
    """
    train, test = companion.load_mnist(train=True), companion.load_mnist(train=False)
    companion.seed_everything(seed)
    model = build_model(config.model).to(device, memory_format=torch.channels_last)
    loader = companion.DeviceLoader.from_split(train, config.batch_size, shuffle=True, drop_last=True,
                                               device=device, seed=seed)  # fmt: skip
    steps = config.epochs * len(loader)
    lr = torch.tensor(config.lr, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay, capturable=True)
    probe = torch.optim.SGD([torch.zeros(1)], lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=config.lr, total_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(probe.param_groups[0]["lr"])
        probe.step()
        schedule.step()
    lrs = torch.tensor(lrs, device=device)
    static_x = torch.zeros(config.batch_size, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    static_y = torch.zeros(config.batch_size, dtype=torch.long, device=device)
    step_index = torch.zeros((), dtype=torch.long, device=device)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    precision = PRECISIONS[config.mixed_precision]
    enabled, dtype = bool(precision), precision if isinstance(precision, torch.dtype) else None

    def step() -> torch.Tensor:
        lr.copy_(lrs[step_index])
        with companion.autocast(device, enabled=enabled, dtype=dtype):
            loss = F.cross_entropy(model(static_x), static_y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        step_index.add_(1)
        return loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (allocations, cuDNN choices)
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    with torch.no_grad():  # undo the warm-up, in place (the graph holds these very tensors)
        for name, value in model.state_dict().items():
            value.copy_(initial[name])
        for state in optimizer.state.values():
            for value in state.values():
                value.zero_()
        step_index.zero_()
    losses = torch.zeros(steps, device=device)
    with companion.Timer(device) as timer:
        i = 0
        for epoch in range(config.epochs):
            loader.set_epoch(epoch)
            for x, y in loader:
                static_x.copy_(x)
                static_y.copy_(y)
                graph.replay()
                losses[i] = static_loss
                i += 1
    if not torch.isfinite(losses).all():
        raise RuntimeError("the CUDA-graph run diverged")
    accuracy = companion.evaluate(model, companion.DeviceLoader.from_split(test, 1000, device=device), device).accuracy
    return {"seconds": timer.seconds, "accuracy": accuracy}


def machine(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device), "gpu": gpu,
            "cpu_bf16_instructions": bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())}  # fmt: skip


def write_json(record: dict, path: Path) -> None:
    """Write ``record`` atomically: a temporary file in the same folder, then renamed."""
    with atomic_write(path, "w") as out:
        json.dump(record, out, indent=2)


def markdown(record: dict) -> str:
    rows = record["pipeline"]
    base = rows["article"]["median"]
    lines = ["| same math as the article: SeedCNN, SGD, batch 64 | s/epoch (median) | min | × article |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for name, row in rows.items():
        lines.append(f"| {name} | {row['median']:.2f} | {row['min']:.2f} | {base / row['median']:.2f}× |")
    lines += ["", "| time to accuracy | seeds | training s (mean) | min–max | test accuracy mean (min–max) |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in record["time_to_accuracy"].items():
        s, a = row["seconds"], row["accuracy"]
        reached = "reached" if row["reached"] else "NOT reached"
        lines.append(f"| {name}: {row['config']['epochs']} epoch(s), {reached} | {len(s['values'])} | "
                     f"{statistics.mean(s['values']):.2f} | {s['min']:.2f}–{s['max']:.2f} | "
                     f"{100 * row['mean_accuracy']:.2f} % ({100 * a['min']:.2f}–{100 * a['max']:.2f}) |")  # fmt: skip
    if record.get("cuda_graph"):
        g = record["cuda_graph"]
        lines.append(f"| FAST as a CUDA graph, seed 0 | 1 | {g['seconds']:.3f} | | {100 * g['accuracy']:.2f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=None, help="batches per pipeline measurement (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each pipeline measurement")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per time-to-accuracy figure")
    parser.add_argument("--skip-995", action="store_true", help="skip the (slower) time to 99.5 %%")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON record")
    parser.add_argument("--fast-precision", choices=["off", "auto", "bfloat16"], default=FAST.mixed_precision,
                        help="FAST's mixed precision (default %(default)s; 'off' on a CPU without bfloat16 instructions)")
    args = parser.parse_args()
    fast = dataclasses.replace(FAST, mixed_precision=args.fast_precision)
    device = companion.get_device()
    split = companion.load_mnist(train=True)
    num_batches = args.batches or -(-len(split) // 64)
    record = {"benchmark": "mnist_pipeline", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(device),
              "batches_per_measurement": num_batches, "repeats": args.repeats}  # fmt: skip
    record["pipeline"] = pipeline_rows(split, device, num_batches, args.repeats)
    record["time_to_accuracy"] = {"99 % (FAST)": time_to_accuracy(fast, args.seeds, device, 0.99)}
    if not args.skip_995:
        config = dataclasses.replace(IMPROVED, epochs=6)
        record["time_to_accuracy"]["99.5 % (IMPROVED, 6 epochs)"] = time_to_accuracy(config, args.seeds, device, 0.995)
    if device.type == "cuda":
        fast_cuda_graph(fast, 0, device)  # warm-up: cuDNN autotuning, allocator
        record["cuda_graph"] = fast_cuda_graph(fast, 0, device)
    path = args.json or RESULTS / f"mnist_pipeline-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(record, path)
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{num_batches} batches per measurement, {args.repeats} repeats")
    print(markdown(record))
    print(f"JSON record: {path}")


if __name__ == "__main__":
    main()
