"""Benchmark: the article's MNIST pipeline against the package's, and the time to 99 %.

Measures, in one run, on the current device (``COMPANION_DEVICE`` or the best available):

1. seconds per epoch of SeedCNN with SGD (lr 0.001, momentum 0.9, batch 64), fed by the
   article's torchvision ``DataLoader`` (PIL → tensor → normalise, per image), and by
   ``companion.DeviceLoader`` with the same normalisation: same model, same math;
2. their ratio;
3. training seconds for ``companion.FAST`` to reach 99 % test accuracy: one-cycle runs of
   1, 2, ... epochs until one ends at >= 99 % (each run's schedule spans its own epochs).

On CUDA, the pipeline times come from CUDA events and the recipe's from ``fit`` (which synchronises
the GPU), each after a warm-up that is not counted.
Usage: ``COMPANION_DATA_DIR=/path/to/data python benchmarks/mnist_pipeline.py [--batches N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T

import companion
from companion.recipes import FAST


class Timer:
    """Wall-clock seconds of a block: CUDA events on a GPU, ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def seconds_per_epoch(loader, num_batches: int, device: torch.device) -> float:
    """Train a fresh SeedCNN (SGD lr 0.001, momentum 0.9) on ``num_batches`` batches; scale to one epoch."""
    companion.seed_everything(0)
    model = companion.SeedCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    batches = iter(loader)
    with Timer(device) as timer:
        for _ in range(num_batches):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return timer.seconds / num_batches * len(loader)


def time_to_99(device: torch.device, max_epochs: int = 4) -> tuple[int, float, float]:
    """(epochs, training seconds, test accuracy) of the shortest FAST run that reaches 99 %.

    Training seconds are ``History.total_seconds``: the training steps only (``fit`` synchronises
    the GPU before reading the clock), not data loading or evaluation. The last run tried is
    returned if none reaches 99 %.
    """
    companion.run_recipe(dataclasses.replace(FAST, epochs=1), device=device, progress=False)  # warm-up, not counted
    for epochs in range(1, max_epochs + 1):
        result = companion.run_recipe(dataclasses.replace(FAST, epochs=epochs), device=device, progress=False)
        if result.test.accuracy >= 0.99:
            break
    return epochs, result.history.total_seconds, result.test.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=None, help="batches per pipeline measurement (default: one epoch)")
    args = parser.parse_args()
    device = companion.get_device()
    split = companion.load_mnist(train=True)
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    dataset = torchvision.datasets.MNIST(root=companion.data_root(), train=True, transform=transform)
    article = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    fast = companion.DeviceLoader(split.images, split.labels, 64, shuffle=True, mean=0.5, std=0.5, device=device)
    num_batches = args.batches or len(fast)
    seconds_per_epoch(fast, min(50, num_batches), device)  # warm-up
    article_s = seconds_per_epoch(article, num_batches, device)
    device_s = seconds_per_epoch(fast, num_batches, device)
    epochs, seconds, accuracy = time_to_99(device)
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{num_batches} batches per pipeline measurement")
    print("| measurement | value |\n|---|---:|")
    print(f"| article pipeline, SeedCNN SGD batch 64 (s/epoch) | {article_s:.2f} |")
    print(f"| DeviceLoader, same math (s/epoch) | {device_s:.2f} |")
    print(f"| ratio (article / DeviceLoader) | {article_s / device_s:.2f}x |")
    reached = "reached" if accuracy >= 0.99 else "did NOT reach"
    print(f"| FAST recipe: training seconds, {epochs} epoch(s), {reached} 99 % ({100 * accuracy:.2f} %) | {seconds:.2f} |")


if __name__ == "__main__":
    main()
