"""The ``resnet20`` benchmark workload: every framework trains the same network."""

import importlib.util
import math

import jax
import pytest

import luxc
from benchmarks import cases, peers_resnet


def test_resnet20_is_a_workload_of_every_group():
    assert "resnet20" in cases.workload_keys()
    assert cases.title("resnet20").startswith("ResNet-20")
    assert set(peers_resnet.variants("luxc", False)) == {"luxc"}
    assert set(peers_resnet.variants("jax", False)) == {"jax.jit+optax"}
    assert set(peers_resnet.variants("torch", False)) == {
        "torch eager", "torch eager channels_last", "torch.compile", "torch.compile channels_last"}
    assert peers_resnet.variants("ablation", False) == {}


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_torch_peer_has_the_tutorials_layers_and_parameters():
    ps, _ = luxc.setup(jax.random.key(0), peers_resnet.WORKLOAD.model())
    shapes = sorted(math.prod(a.shape) for a in jax.tree.leaves(ps))
    torch_model = peers_resnet._torch_resnet()
    assert sorted(p.numel() for p in torch_model.parameters()) == shapes
    # closed form: a 3x3 Conv i -> o has 9·i·o + o parameters, a BatchNorm 2·o
    def conv(i, o, bn=True):
        return 9 * i * o + o + (2 * o if bn else 0)

    stages = sum(conv(i, o, bn=False) + conv(i, o) + conv(o, o) + 2 * 2 * conv(o, o)
                 for i, o in ((16, 32), (32, 64))) + 3 * 2 * conv(16, 16)
    assert sum(shapes) == conv(3, 16) + stages + 64 * 10 + 10 == 293_546
