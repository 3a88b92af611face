"""Launched by tests/test_distributed.py with torchrun: train a small network with fit(), save the result.

Usage: torchrun --standalone --nproc-per-node=N tests/ddp_worker.py OUT GLOBAL_BATCH [unequal|batchnorm]

- default: an MLP; rank 0 saves its weights and history to OUT.
- unequal: rank 1 gets half the data, so fit() must refuse; rank 0 saves the error message to OUT.
- batchnorm: a BatchNormCNN with random shifts; every rank saves its state to OUT.rankR.pt.
- simclr: SimCLR pretraining of a BatchNormCNN (whose classifier gets no gradient); rank 0 saves.
"""

import sys

import torch

from companion.cnn import BatchNormCNN
from companion.concepts import MLP
from companion.augment import RandomTranslate
from companion.data import DeviceLoader
from companion.distributed import destroy_distributed, init_distributed
from companion.train import fit

out, global_batch = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "mlp"
info = init_distributed(device="cpu")
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
x = torch.randn(240, 1, 28, 28, generator=generator)
y = torch.randint(0, 10, (240,), generator=generator)
if mode == "unequal" and info.rank == 1:
    x, y = x[:120], y[:120]  # this process would run fewer steps: fit() must refuse
torch.manual_seed(0)
model = BatchNormCNN(channels=(2, 4)) if mode == "batchnorm" else MLP(hidden_size=16)
shift = RandomTranslate(2) if mode == "batchnorm" else None
loader = DeviceLoader(x, y, global_batch // info.world_size, shuffle=True, drop_last=True, device="cpu", seed=3,
                      transform=shift, rank=info.rank, world_size=info.world_size)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
if mode == "simclr":
    from companion.simclr import pretrain_simclr

    model = BatchNormCNN(channels=(2, 4))
    history = pretrain_simclr(model, loader, epochs=2, device="cpu", progress=False)
    if info.rank == 0:
        torch.save({"model": model.state_dict(), "history": history.to_dict()}, out)
    destroy_distributed()
    sys.exit(0)
try:
    history = fit(model, loader, optimizer=optimizer, epochs=3, device="cpu", progress=False,
                  val_loader=DeviceLoader(x, y, 50, device="cpu", rank=info.rank, world_size=info.world_size))
except ValueError as error:
    if info.rank == 0:
        torch.save({"error": str(error)}, out)
else:
    result = {"model": model.state_dict(), "history": history.to_dict()}
    if mode == "batchnorm":
        torch.save(result, f"{out}.rank{info.rank}.pt")
    elif info.rank == 0:
        torch.save(result, out)
finally:
    destroy_distributed()
