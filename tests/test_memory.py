"""saved_activation_bytes: the storages autograd keeps, parameters excluded."""
import torch
from torch import nn

from transfusion.memory import saved_activation_bytes


def test_counts_saved_activations_once_and_skips_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    x = torch.randn(3, 4, requires_grad=True)
    # Linear keeps its input (3x4 float32) and its weight (a parameter: not counted); ReLU keeps
    # its output (3x8 float32).
    assert saved_activation_bytes(net, x) == 3 * 4 * 4 + 3 * 8 * 4


def test_nothing_saved_without_grad():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with torch.no_grad():
        assert saved_activation_bytes(net, torch.randn(3, 4)) == 0
