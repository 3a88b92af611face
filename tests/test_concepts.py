"""Logistic regression, the MLP, and hand-written backpropagation checked against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.concepts import MLP, LogisticRegression, mlp_forward_backward
from companion.recipes import build_model
from companion.summary import count_parameters


def test_logistic_regression_is_one_linear_layer_on_flattened_pixels():
    torch.manual_seed(0)
    model = LogisticRegression()
    x = torch.randn(3, 1, 28, 28)
    expected = x.flatten(1) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), expected)
    assert count_parameters(model) == 784 * 10 + 10


def test_mlp_matches_its_definition_and_parameter_count():
    torch.manual_seed(0)
    model = MLP(hidden_size=32)
    x = torch.randn(4, 1, 28, 28)
    hidden = torch.relu(x.flatten(1) @ model.fc1.weight.T + model.fc1.bias)
    torch.testing.assert_close(model(x), hidden @ model.fc2.weight.T + model.fc2.bias)
    assert count_parameters(model) == 784 * 32 + 32 + 32 * 10 + 10


@pytest.mark.parametrize("model", [LogisticRegression(), MLP()])
def test_wrong_image_size_is_an_error_naming_the_shape(model):
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="784 features"):
        model(torch.zeros(2, 700))


def test_mlp_rejects_empty_hidden_layer():
    with pytest.raises(ValueError, match="hidden_size"):
        MLP(hidden_size=0)


def test_models_are_registered_for_recipes():
    assert isinstance(build_model("logreg"), LogisticRegression)
    assert isinstance(build_model("mlp"), MLP)


def test_hand_backprop_equals_autograd_in_float64():
    torch.manual_seed(1)
    x, target = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2, 0, 1])
    layer1, layer2 = nn.Linear(5, 4).double(), nn.Linear(4, 3).double()
    loss = nn.functional.cross_entropy(layer2(torch.relu(layer1(x))), target)
    loss.backward()
    manual = mlp_forward_backward(x, target, layer1.weight, layer1.bias, layer2.weight, layer2.bias)
    torch.testing.assert_close(manual.loss, loss.detach(), rtol=0, atol=1e-14)
    for got, parameter in [
        (manual.weight1, layer1.weight),
        (manual.bias1, layer1.bias),
        (manual.weight2, layer2.weight),
        (manual.bias2, layer2.bias),
    ]:
        torch.testing.assert_close(got, parameter.grad, rtol=0, atol=1e-14)


def test_hand_backprop_on_a_hand_calculation():
    # One sample, one hidden unit, two classes, all weights 0 except w1 = 1: a = x = 2, h = 2,
    # z = (0, 0), p = (1/2, 1/2), loss = log 2; dL/dz = (p - onehot(0)) = (-1/2, 1/2).
    x, target = torch.tensor([[2.0]]), torch.tensor([0])
    w1, b1, w2, b2 = torch.tensor([[1.0]]), torch.zeros(1), torch.zeros(2, 1), torch.zeros(2)
    g = mlp_forward_backward(x, target, w1, b1, w2, b2)
    assert g.loss.item() == pytest.approx(0.6931471805599453)
    torch.testing.assert_close(g.bias2, torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(g.weight2, torch.tensor([[-1.0], [1.0]]))  # dz^T h, h = 2
    torch.testing.assert_close(g.weight1, torch.zeros(1, 1))  # w2 = 0 blocks the gradient


def test_hand_backprop_errors():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    w1, b1, w2, b2 = torch.zeros(4, 3), torch.zeros(4), torch.zeros(2, 4), torch.zeros(2)
    with pytest.raises(ValueError, match="weight1 must have shape"):
        mlp_forward_backward(x, y, torch.zeros(4, 2), b1, w2, b2)
    with pytest.raises(ValueError, match=r"target \(B,\)"):
        mlp_forward_backward(x, torch.tensor([0]), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="int64 class indices, got torch.int32"):
        mlp_forward_backward(x, y.int(), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        mlp_forward_backward(x, torch.tensor([0, 2]), w1, b1, w2, b2)
