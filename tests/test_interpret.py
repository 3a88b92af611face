"""Attributions on models where the answer is known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.cnn import BatchNormCNN
from companion.interpret import attribution_in_mask, grad_cam, integrated_gradients, saliency


def _linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double()
    return model, model[1].weight.detach().view(4, 2, 3, 3)


def test_saliency_of_a_linear_model_is_the_absolute_weight_of_the_target_class():
    model, weight = _linear_model()
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    torch.testing.assert_close(saliency(model, x, target), weight[target].abs())


def test_integrated_gradients_of_a_linear_model_is_input_times_weight():
    model, weight = _linear_model()
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    attributions, delta = integrated_gradients(model, x, 1, baseline=0.0, n_steps=5)
    torch.testing.assert_close(attributions, x * weight[1])
    assert delta.abs().max() < 1e-10


def test_integrated_gradients_is_complete_on_a_nonlinear_network():
    torch.manual_seed(0)
    model = BatchNormCNN(channels=(4, 8)).double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    baseline = torch.full_like(x, x.min().item())
    attributions, delta = integrated_gradients(model, x, torch.tensor([3, 7]), n_steps=200)
    with torch.no_grad():
        gap = model(x)[[0, 1], [3, 7]] - model(baseline)[[0, 1], [3, 7]]
    assert gap.abs().min() > 1e-3  # an all-zero attribution could not sum to the gap
    torch.testing.assert_close(attributions.flatten(1).sum(1), gap, atol=1e-2 * gap.abs().max().item(), rtol=0)
    assert delta.shape == (2,)


class _GapNet(nn.Module):
    """1x1 convolution -> global average pooling -> linear: Grad-CAM reduces to CAM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_grad_cam_equals_class_activation_map_for_a_global_average_pooling_network():
    torch.manual_seed(0)
    model = _GapNet().double()
    with torch.no_grad():  # known weights, so that the map is positive at some pixels and zero at others
        model.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1))
        model.conv.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
        model.fc.weight[1] = torch.tensor([1.0, 0.2, 0.3])
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    cam = grad_cam(model, model.conv, x, 1)
    maps = model.conv(x).detach()  # (B, 3, 5, 5)
    weights = model.fc.weight.detach()[1] / 25  # dz/dA_k averaged over the 25 positions
    expected = torch.relu((weights.view(1, 3, 1, 1) * maps).sum(1, keepdim=True))
    assert (expected.flatten(1).amax(1) > 0).all() and (expected == 0).any()  # neither all-zero nor all-positive
    torch.testing.assert_close(cam, expected)


def test_grad_cam_is_upsampled_to_the_image():
    torch.manual_seed(0)
    model = BatchNormCNN(channels=(4, 8)).eval()
    x, target = torch.randn(3, 1, 28, 28), torch.tensor([0, 1, 2])
    cam = grad_cam(model, model.bn2, x, target)
    assert cam.shape == (3, 1, 28, 28) and (cam >= 0).all()
    assert (cam.flatten(1).amax(1) > 0).all() and (cam.flatten(1).std(1) > 0).all()  # a real map per image
    # Grad-CAM by hand at the layer's resolution (Selvaraju et al., 2017, eq. 1-2), then upsampled.
    activations = {}
    handle = model.bn2.register_forward_hook(lambda module, args, out: activations.update(a=out))
    logits = model(x)
    handle.remove()
    a = activations["a"]  # (B, K, h, w)
    (grads,) = torch.autograd.grad(logits[torch.arange(3), target].sum(), a)
    small = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    expected = nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, expected, rtol=1e-4, atol=1e-6)


def test_attribution_in_mask_by_hand():
    attributions = torch.tensor([[[[1.0, -3.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[True, False], [False, False]]]]).expand(2, 1, 2, 2)
    torch.testing.assert_close(attribution_in_mask(attributions, mask), torch.tensor([0.25, 0.0]))
    with pytest.raises(ValueError, match="expected"):
        attribution_in_mask(attributions[0], mask[0])
    with pytest.raises(ValueError, match="does not broadcast"):
        attribution_in_mask(torch.ones(2, 2, 3, 3), torch.ones(2, 1, 2, 2, dtype=torch.bool))


def test_attribution_in_mask_counts_a_single_map_once_per_mask_channel():
    attributions = torch.tensor([[[[2.0, 0.0], [0.0, 2.0]]]])  # (1, 1, 2, 2)
    mask = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    mask[:, :, 0, 0] = True  # the top-left pixel in all three channels
    torch.testing.assert_close(attribution_in_mask(attributions, mask), torch.tensor([0.5]))
    mask[:, :, 1, 1] = True
    torch.testing.assert_close(attribution_in_mask(attributions, mask), torch.tensor([1.0]))


def test_bad_inputs_are_clear_errors():
    model, _ = _linear_model()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        saliency(model, x.long(), 0)
    with pytest.raises(ValueError, match="four dimensions"):
        saliency(model, x[0], 0)
    with pytest.raises(ValueError, match="target must be"):
        saliency(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="n_steps"):
        integrated_gradients(model, x, 0, n_steps=0)
