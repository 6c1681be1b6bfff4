"""Bad input gets an error that names the cause and the fix."""

import pytest
import torch
from support import Raises
from torch import nn

import flowprune


def test_model_that_raises_names_the_module():
    with pytest.raises(
        flowprune.TraceError, match=r"RuntimeError in module 'inner.1' \(Linear\).*example_inputs"
    ):
        flowprune.trace(Raises(), torch.randn(2, 4))


@pytest.mark.parametrize(
    "bad, match",
    [
        ([torch.randn(2, 4)], "pass a tuple"),
        (3, "must be a Tensor, a tuple"),
        ({"x": 1}, "contains no tensor"),
    ],
)
def test_wrong_input_types(bad, match):
    with pytest.raises(flowprune.InputError, match=match):
        flowprune.trace(nn.Linear(4, 4), bad)


def test_not_a_module():
    with pytest.raises(flowprune.InputError, match="torch.nn.Module"):
        flowprune.trace(lambda x: x, torch.randn(2))
