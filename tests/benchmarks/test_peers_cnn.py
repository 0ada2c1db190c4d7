"""The CNN benchmark workloads (Lux's CIFAR-10 tutorial models): every framework trains the same
network."""

import importlib.util
import math

import jax
import pytest

import luxc
from benchmarks import cases, peers_cnn

TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def test_the_tutorial_cnns_are_workloads_of_every_group():
    for key, title in (("resnet20", "ResNet-20"), ("convmixer", "ConvMixer-256/4")):
        assert key in cases.workload_keys()
        assert cases.title(key).startswith(title)
    assert set(peers_cnn.variants("luxc", False)) == {"luxc"}
    assert set(peers_cnn.variants("jax", False)) == {"jax.jit+optax"}
    assert set(peers_cnn.variants("torch", False)) == {
        "torch eager", "torch eager channels_last", "torch.compile", "torch.compile channels_last"}
    assert peers_cnn.variants("ablation", False) == {}


def _luxc_sizes(work):
    ps, _ = luxc.setup(jax.random.key(0), work.model())
    return sorted(math.prod(a.shape) for a in jax.tree.leaves(ps))


@TORCH
def test_the_torch_resnet_has_the_tutorials_parameters():
    shapes = _luxc_sizes(peers_cnn.RESNET20)
    assert sorted(p.numel() for p in peers_cnn._torch_resnet().parameters()) == shapes

    # closed form: a 3x3 Conv i -> o has 9·i·o + o parameters, a BatchNorm 2·o
    def conv(i, o, bn=True):
        return 9 * i * o + o + (2 * o if bn else 0)

    stages = sum(conv(i, o, bn=False) + conv(i, o) + conv(o, o) + 2 * 2 * conv(o, o)
                 for i, o in ((16, 32), (32, 64))) + 3 * 2 * conv(16, 16)
    assert sum(shapes) == conv(3, 16) + stages + 64 * 10 + 10 == 293_546


@TORCH
def test_the_torch_convmixer_has_the_tutorials_parameters():
    shapes = _luxc_sizes(peers_cnn.CONVMIXER)
    assert sorted(p.numel() for p in peers_cnn._torch_convmixer().parameters()) == shapes
    d = peers_cnn.MIXER_WIDTH
    # patch conv 2x2 + BN; per mixer: depthwise 5x5 + BN, 1x1 conv + BN; the Dense head
    mixer = (25 * d + d + 2 * d) + (d * d + d + 2 * d)
    assert sum(shapes) == (4 * 3 * d + d + 2 * d) + peers_cnn.MIXER_DEPTH * mixer + d * 10 + 10
