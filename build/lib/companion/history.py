"""What a training run records: per-epoch :class:`History` and averaged :class:`Metrics`.

Used by :mod:`companion.train` (``fit`` returns a History), :mod:`companion.evaluation` (``evaluate``
returns Metrics), :mod:`companion.checkpoint` (a checkpoint stores the History) and
:mod:`companion.simclr`. Explained in the chapter "MNIST in practice".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["History", "Metrics"]


@dataclass(frozen=True)
class Metrics:
    """Loss and accuracy averaged over samples.

    Attributes:
        loss: mean cross-entropy per sample (nats).
        accuracy: fraction of samples classified correctly, in [0, 1].
        num_samples: number of samples averaged over.
    """

    loss: float
    accuracy: float
    num_samples: int


@dataclass
class History:
    """Per-epoch record of a :func:`~companion.train.fit` run; every list has one entry per epoch.

    ``val_*`` hold what the run was validated on: a validation split held out from the training
    set, or — where a chapter says so — the test split, which then measures the final result and
    chose nothing. Without validation data they are NaN.

    Attributes:
        epoch: epoch numbers, starting at 1.
        train_loss: mean training loss per sample, as optimised (including label smoothing).
        train_accuracy: training accuracy in [0, 1], measured on the fly in training mode.
        val_loss: validation loss per sample (NaN when no validation data was given).
        val_accuracy: validation accuracy in [0, 1] (NaN when no validation data was given).
        seconds: wall-clock seconds of the epoch's training steps (validation excluded).
        lr: learning rate of the first parameter group in the epoch's last optimizer step.
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def append(self, **values: float) -> None:
        """Record one epoch: one value for every field (``epoch``, ``train_loss``, ..., ``lr``).

        Raises:
            ValueError: a field is missing or an unknown one is given (nothing is recorded).
        """
        names = [f.name for f in fields(self)]
        if set(values) != set(names):
            missing, unknown = sorted(set(names) - set(values)), sorted(set(values) - set(names))
            raise ValueError(f"History.append needs exactly the fields {names}; "
                             f"missing {missing}, unknown {unknown}")
        for name in names:
            getattr(self, name).append(values[name])

    def __len__(self) -> int:
        return len(self.epoch)

    @property
    def total_seconds(self) -> float:
        """Training seconds summed over epochs."""
        return float(sum(self.seconds))

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> History:
        return cls(**{k: list(v) for k, v in data.items()})
