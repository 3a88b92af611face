"""Command line: ``python -m companion train ...`` and ``python -m companion shard ...`` (see ``--help``).

Exit codes: 0 success, 1 data or device problem (one line on stderr), 2 bad arguments.
Under ``torchrun --nproc-per-node=N -m companion train ...`` the N processes train one model
with DistributedDataParallel; ``--batch-size`` stays the global batch and only rank 0 prints
and writes the checkpoint. ``shard`` runs :func:`companion.large_models.train_sharded` (one process,
or DDP / FSDP2 under torchrun) and saves rank 0's result with ``torch.save``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import torch

from .data import CorruptDataError, DataNotFoundError
from .distributed import destroy_distributed, init_distributed, is_main_process
from .recipes import ARTICLE, FAST, IMPROVED, MODELS, TrainConfig, run_recipe
from .history import History
from .train import NonFiniteLossError

__all__ = ["build_parser", "main"]

RECIPES = {"default": TrainConfig(), "article": ARTICLE, "improved": IMPROVED, "fast": FAST}


def _number(text: str, kind: type, expected: str):
    """``kind(text)``, or argparse's error saying what was expected (not a private function's name)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float, "a number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _device_name(text: str) -> str:
    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda, cuda:1 or mps, got {text!r}") from None
    return text


def _seed(text: str) -> int:
    value = _number(text, int, "an integer in [0, 2**32)")
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m companion``."""
    parser = argparse.ArgumentParser(prog="python -m companion", description="Companion package of the book.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train a model on MNIST or Fashion-MNIST and report test accuracy")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                   help="base settings: default (SeedCNN, SGD lr 0.01), article (lr 0.001), improved or fast")
    p.add_argument("--model", choices=sorted(MODELS), help="network (default: the recipe's)")
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], help="dataset (default: mnist)")
    p.add_argument("--epochs", type=_positive_int, help="passes over the training set")
    p.add_argument("--batch-size", type=_positive_int, help="samples per step")
    p.add_argument("--lr", type=_positive_float, help="(peak) learning rate")
    p.add_argument("--seed", type=_seed, help="random seed (default 0)")
    p.add_argument("--mixed-precision", choices=["off", "auto", "bfloat16", "float16"],
                   help="autocast: off, auto (CUDA's choice), bfloat16 (any device) or float16 (CUDA); default: the recipe's")
    p.add_argument("--data-dir", help="data root (default: $COMPANION_DATA_DIR, then ~/.cache/companion/data)")
    p.add_argument("--device", type=_device_name, help="cpu, cuda, cuda:N or mps (default: $COMPANION_DEVICE, then the best available)")
    p.add_argument("--download", action="store_true", help="download the dataset if its files are missing")
    p.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bar")
    q = commands.add_parser("shard", help="train the attention chapter's ViT a few steps: one process, DDP or FSDP2")
    q.add_argument("out", help="file rank 0 saves the result to (weights, losses, bytes per rank)")
    q.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="fsdp",
                   help="single (one process), ddp or fsdp (under torchrun)")
    q.add_argument("--steps", type=_positive_int, default=4, help="optimizer steps")
    q.add_argument("--batch-size", type=_positive_int, default=32, help="global batch, split among the processes")
    q.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="weights and inputs")
    return parser


def _shard(args: argparse.Namespace) -> int:
    """``python -m companion shard``: run train_sharded, rank 0 saves (temporary file, then renamed)."""
    from .large_models import train_sharded
    from .utils import atomic_write

    try:
        result = train_sharded(args.strategy, steps=args.steps, batch_size=args.batch_size,
                               dtype=getattr(torch, args.dtype))
        if is_main_process():
            with atomic_write(args.out) as file:
                torch.save(result, file)
    except (DataNotFoundError, CorruptDataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    overrides = {
        field: getattr(args, field)
        for field in ("model", "dataset", "epochs", "batch_size", "lr", "seed", "mixed_precision")
        if getattr(args, field) is not None
    }
    return dataclasses.replace(RECIPES[args.recipe], **overrides)


def _print_epoch(history: History) -> None:
    i = len(history) - 1
    print(
        f"epoch {history.epoch[i]:>3}  train loss {history.train_loss[i]:.4f}  "
        f"train acc {100 * history.train_accuracy[i]:6.2f}%  test loss {history.val_loss[i]:.4f}  "
        f"test acc {100 * history.val_accuracy[i]:6.2f}%  {history.seconds[i]:6.1f} s",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "shard":
        return _shard(args)
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint PATH")
    try:
        config = _config(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        info = init_distributed(args.device)  # under torchrun: join the process group; else rank 0 of 1
    except (RuntimeError, ValueError) as err:  # a known device that this machine does not have
        print(f"error: {err}", file=sys.stderr)
        return 1
    device, main = info.device, info.rank == 0
    if main:
        processes = f", {info.world_size} processes" if info.world_size > 1 else ""
        print(f"training {config.model} on {config.dataset} ({device}{processes}): {config}", flush=True)
    try:
        result = run_recipe(
            config,
            root=args.data_dir,
            device=device,
            download=args.download,
            checkpoint_path=args.checkpoint,
            resume=args.resume,
            progress=not args.no_progress,
            on_epoch_end=_print_epoch,
        )
    except (DataNotFoundError, CorruptDataError, NonFiniteLossError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    if not main:
        return 0
    test = result.test
    correct = round(test.accuracy * test.num_samples)
    print(f"test accuracy: {100 * test.accuracy:.2f}% ({correct}/{test.num_samples}), test loss {test.loss:.4f}")
    return 0
