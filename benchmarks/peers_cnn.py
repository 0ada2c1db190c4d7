"""Lux's CIFAR-10 tutorial CNNs (``examples/lux/CIFAR10.py``) as workloads, one training step
(forward + cross-entropy on logits + backward + Adam 1e-3) on a batch of 32×32×3 images, in
float32:

- ``resnet20``: ResNet-20 (3×3 convolutions of 16, 32 and 64 channels, BatchNorm, identity or
  strided-convolution shortcuts), batch 128;
- ``convmixer``: ConvMixer of width 256 (the tutorial's) and depth 4 (its 8 halved, for the time
  a run takes on a few cores): a 2×2 patch convolution, then per mixer a 5×5 depthwise
  convolution in a residual connection and a 1×1 convolution, batch 64.

Each against:

- luxc: ``single_train_step_`` on the tutorial's model (BatchNorm's statistics carried);
- jax.jit + optax: the same luxc model function under one donating ``jax.jit``;
- torch: eager and ``torch.compile``, channels-first (torch's default) and ``channels_last``
  (the memory format torch recommends for convolutions on CPUs).

Convolutional models of the sizes users train, where LeNet-5 is a small one.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxc

try:
    from benchmarks import workloads as wl
    from benchmarks.peers_jax import Step, jit_adam_step, luxc_step
    from benchmarks.peers_torch import target, waitable
except ImportError:  # run from benchmarks/
    import workloads as wl
    from peers_jax import Step, jit_adam_step, luxc_step
    from peers_torch import target, waitable

BATCH = 128
_TUTORIAL = Path(__file__).resolve().parent.parent / "examples" / "lux" / "CIFAR10.py"


@functools.cache
def _tutorial():
    """examples/lux/CIFAR10.py as a module (it imports ``_dataloader`` from beside it)."""
    sys.path.insert(0, str(_TUTORIAL.parent))
    spec = importlib.util.spec_from_file_location("lux_cifar10_tutorial", _TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(batch: int = BATCH):
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
    return x, jax.nn.one_hot(jax.random.randint(jax.random.key(2), (batch,), 0, 10), 10)


RESNET20 = wl.Workload(
    "resnet20", "ResNet-20", f"ResNet-20 (Lux's CIFAR-10 tutorial) 32x32x3, b{BATCH}", 3, 1,
    _images, lambda: _tutorial().resnet20(), lambda: luxc.CrossEntropyLoss(logits=True))
MIXER_WIDTH, MIXER_DEPTH, MIXER_BATCH = 256, 4, 64
CONVMIXER = wl.Workload(
    "convmixer", "ConvMixer", f"ConvMixer-{MIXER_WIDTH}/{MIXER_DEPTH} (Lux's CIFAR-10 tutorial) "
    f"32x32x3, b{MIXER_BATCH}", 1, 1, lambda: _images(MIXER_BATCH),
    lambda: _tutorial().conv_mixer(dim=MIXER_WIDTH, depth=MIXER_DEPTH),
    lambda: luxc.CrossEntropyLoss(logits=True))
WORKLOADS = (RESNET20, CONVMIXER)


def jax_cnn(work: wl.Workload, x, y) -> Step:
    """The same luxc model function under one donating ``jax.jit`` (BatchNorm's batch
    statistics computed, its running statistics not carried: a little less work than luxc's)."""
    model = work.model()
    params, st = luxc.setup(jax.random.key(0), model)

    def loss(p, x, y):
        return jnp.mean(optax.softmax_cross_entropy(model(x, p, st)[0], y))

    return jit_adam_step(loss, params, x, y)


def _torch_resnet():
    import torch
    from torch import nn

    def conv_bn(i, o, relu, stride=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1),
                             *([nn.ReLU()] if relu else []), nn.BatchNorm2d(o))

    class Block(nn.Module):  # the tutorial's basic_block: relu(shortcut(x) + ConvBN(ConvBN(x)))
        def __init__(self, i, o, stride):
            super().__init__()
            self.shortcut = (nn.Identity() if stride == 1 and i == o
                             else nn.Conv2d(i, o, 3, stride=stride, padding=1))
            self.body = nn.Sequential(conv_bn(i, o, True, stride), conv_bn(o, o, False))

        def forward(self, x):
            return torch.relu(self.shortcut(x) + self.body(x))

    layers = [conv_bn(3, 16, True)]
    for i, o, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
        layers += [Block(i, o, stride), Block(o, o, 1), Block(o, o, 1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _torch_convmixer(dim: int = MIXER_WIDTH, depth: int = MIXER_DEPTH, kernel: int = 5,
                     patch: int = 2):
    import torch
    from torch import nn

    class Residual(nn.Module):  # the tutorial's SkipConnection(depthwise, +)
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x) + x

    def mixer():
        depthwise = nn.Sequential(nn.Conv2d(dim, dim, kernel, groups=dim, padding="same"),
                                  nn.ReLU(), nn.BatchNorm2d(dim))
        return nn.Sequential(Residual(depthwise), nn.Conv2d(dim, dim, 1), nn.ReLU(),
                             nn.BatchNorm2d(dim))

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, dim, patch, stride=patch), nn.ReLU(), nn.BatchNorm2d(dim),
                         *[mixer() for _ in range(depth)], nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(dim, 10))


def torch_cnn(work: wl.Workload, x, y, compiled: bool, channels_last: bool,
              device: bool = False) -> Step:
    """An eager or ``torch.compile``-d step, torch's default threads and OpenMP policy."""
    import torch
    import torch.nn.functional as F

    where = target(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = (_torch_resnet() if work.key == RESNET20.key else _torch_convmixer())
    model = model.to(where, memory_format=fmt)
    tx = torch.from_numpy(np.ascontiguousarray(np.transpose(np.array(x), (0, 3, 1, 2))))
    tx = tx.to(where).contiguous(memory_format=fmt)
    ty = torch.from_numpy(np.array(y).argmax(-1).astype(np.int64)).to(where)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tx), ty)
        loss.backward()
        opt.step()
        return loss

    return waitable(torch.compile(train_step) if compiled else train_step)


def variants(group: str, device: bool) -> dict[str, tuple[str | None, Callable]]:
    """``group``'s variants: name -> (package it needs, or None; maker)."""
    if group == "luxc":
        return {"luxc": (None, lambda w, x, y: luxc_step(w, x, y))}
    if group == "jax":
        return {"jax.jit+optax": (None, jax_cnn)}
    out = {}
    if group != "torch":  # no ablation of this workload
        return out
    for mode, compiled in (("torch eager", False), ("torch.compile", True)):
        for layout, last in (("", False), (" channels_last", True)):
            out[mode + layout] = ("torch", lambda w, x, y, c=compiled, last=last: torch_cnn(
                w, x, y, c, last, device))
    return out
