"""Launched by tests/test_distributed.py with torchrun: train a small MLP with fit(), save rank 0's result.

Usage: torchrun --standalone --nproc-per-node=N tests/ddp_worker.py OUT.pt GLOBAL_BATCH [unequal]
"""

import sys

import torch

from companion.concepts import MLP
from companion.data import DeviceLoader
from companion.distributed import destroy_distributed, init_distributed
from companion.train import fit

out, global_batch = sys.argv[1], int(sys.argv[2])
unequal = len(sys.argv) > 3
info = init_distributed(device="cpu")
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
x = torch.randn(240, 1, 28, 28, generator=generator)
y = torch.randint(0, 10, (240,), generator=generator)
if unequal and info.rank == 1:
    x, y = x[:120], y[:120]  # this process would run fewer steps: fit() must refuse
torch.manual_seed(0)
model = MLP(hidden_size=16)
loader = DeviceLoader(x, y, global_batch // info.world_size, shuffle=True, drop_last=True, device="cpu", seed=3,
                      rank=info.rank, world_size=info.world_size)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
try:
    history = fit(model, loader, optimizer=optimizer, epochs=3, device="cpu", progress=False,
                  val_loader=DeviceLoader(x, y, 50, device="cpu", rank=info.rank, world_size=info.world_size))
except ValueError as error:
    if info.rank == 0:
        torch.save({"error": str(error)}, out)
else:
    if info.rank == 0:
        torch.save({"model": model.state_dict(), "history": history.to_dict()}, out)
finally:
    destroy_distributed()
