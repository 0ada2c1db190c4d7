"""The workloads in PyTorch, eager and ``torch.compile``: ``nn.Module``, ``loss.backward()``,
``torch.optim.Adam``."""

from __future__ import annotations

import numpy as np

try:
    from benchmarks import workloads as wl
    from benchmarks.peers_jax import Step
except ImportError:  # run from benchmarks/
    import workloads as wl
    from peers_jax import Step


def _model(key: str):
    import torch
    import torch.nn.functional as F
    from torch import nn

    if key == "tiny":
        return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    if key == "mlp":
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))
    if key == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(),
                             nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if key == "transformer":
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln1, self.ln2 = nn.LayerNorm(wl.W), nn.LayerNorm(wl.W)
                self.qkv, self.out = nn.Linear(wl.W, 3 * wl.W), nn.Linear(wl.W, wl.W)
                self.mlp = nn.Sequential(nn.Linear(wl.W, wl.M), nn.GELU(approximate="tanh"),
                                         nn.Linear(wl.M, wl.W))

            def forward(self, x):
                b, t, w = x.shape
                q, k, v = self.qkv(self.ln1(x)).split(w, dim=-1)
                q, k, v = (z.view(b, t, wl.H, w // wl.H).transpose(1, 2) for z in (q, k, v))
                o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)
                x = x + self.out(o)
                return x + self.mlp(self.ln2(x))

        return Block()

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = nn.Linear(8, 1)

        def forward(self, x):
            return torch.sigmoid(self.d(x))[..., 0]

    return Head()


def _loss(key: str):
    from torch import nn

    if key in ("tiny", "transformer"):
        return nn.MSELoss()
    if key in ("mlp", "lenet"):
        return nn.CrossEntropyLoss()

    def dice(p, y):
        num = 2 * (y * p).sum(1) + 1
        return (1 - num / ((p * p).sum(1) + (y * y).sum(1) + 1)).mean()

    return dice


def torch_step(work: wl.Workload, x, y, compiled: bool, autocast: bool = False,
               blocks: int = 1, device: bool = False) -> Step:
    """One eager (or ``torch.compile``-d) training step; waiting on it reads the loss.
    ``autocast``: the forward and loss under ``torch.autocast(..., torch.bfloat16)`` (torch's
    mixed precision: float32 parameters, bf16 matrix products). ``blocks``: that many copies of
    the workload's model one after another (the depth benchmark's N transformer blocks).
    ``device``: on CUDA instead of the CPU. torch keeps its default threads and OpenMP policy,
    as its users run it (it has a process of its own: nothing else competes for the cores)."""
    import torch

    where = target(device)
    torch.manual_seed(0)
    model = (_model(work.key) if blocks == 1
             else torch.nn.Sequential(*[_model(work.key) for _ in range(blocks)])).to(where)
    tx = np.array(x)  # a writable copy: torch refuses read-only buffers
    if work.key == "lenet":
        tx = np.transpose(tx, (0, 3, 1, 2))  # torch convolutions are channels-first
    tx = torch.from_numpy(np.ascontiguousarray(tx)).to(where)
    ty = np.array(y)
    ty = torch.from_numpy(ty.argmax(-1).astype(np.int64) if work.key in ("mlp", "lenet")
                          else ty.copy()).to(where)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = _loss(work.key)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(where, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        return loss

    return waitable(torch.compile(train_step) if compiled else train_step)


def target(device: bool) -> str:
    """torch's device: ``"cuda"`` for ``--device`` (an error naming the fix when torch sees
    none), else ``"cpu"``."""
    import torch

    if device and not torch.cuda.is_available():
        raise RuntimeError("--device: torch sees no CUDA device (install a CUDA build of torch)")
    return "cuda" if device else "cpu"


class _Done:
    """A torch loss that the timer can wait on as on a jax array (``.item()`` syncs)."""

    def __init__(self, t):
        self.t = t

    def block_until_ready(self):
        return self.t.item()


def waitable(fn) -> Step:
    """``fn`` (returning a torch scalar) as a step whose result has ``block_until_ready``."""
    return lambda: _Done(fn())
