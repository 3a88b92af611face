"""companion.cnn: parameter counts, shapes, input checks, and twins written with torch.nn.functional."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.cnn import BatchNormCNN, SeedCNN, check_image_shape

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_cnn_params(c1: int, c2: int, num_classes: int = 10) -> int:
    """Hand count: two bias-free 5x5 convolutions, two BatchNorms (weight + bias), a linear head on c2 x 4 x 4."""
    conv1 = 1 * c1 * 5 * 5
    bn1 = 2 * c1
    conv2 = c1 * c2 * 5 * 5
    bn2 = 2 * c2
    fc = c2 * 4 * 4 * num_classes + num_classes
    return conv1 + bn1 + conv2 + bn2 + fc


def article_forward(model: SeedCNN, x: torch.Tensor) -> torch.Tensor:
    """The source article's forward pass as it writes it: ReLU, then max-pool, and ``x.view(-1, 320)``."""
    x = F.max_pool2d(F.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias)), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, model.conv2.weight, model.conv2.bias)), 2)
    x = x.view(-1, 320)
    x = F.relu(F.linear(x, model.fc1.weight, model.fc1.bias))
    return F.linear(x, model.fc2.weight, model.fc2.bias)


def bn_cnn_forward(model: BatchNormCNN, x: torch.Tensor) -> torch.Tensor:
    """BatchNormCNN's forward with F.* (ReLU before pooling, the usual order; they commute)."""

    def bn(z: torch.Tensor, layer: torch.nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(z, layer.running_mean.clone(), layer.running_var.clone(), layer.weight, layer.bias,
                            training=model.training, momentum=0.0, eps=layer.eps)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, model.conv1.weight), model.bn1)), 2)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, model.conv2.weight), model.bn2)), 2)
    return F.linear(x.flatten(1), model.fc.weight, model.fc.bias)


# --- parameter counts and shapes --------------------------------------------------------


def test_seed_cnn_has_21840_parameters():
    # conv1 1*10*25 + 10, conv2 10*20*25 + 20, fc1 320*50 + 50, fc2 50*10 + 10
    assert n_params(SeedCNN()) == 260 + 5020 + 16050 + 510 == 21_840


@pytest.mark.parametrize(("channels", "num_classes"), [((32, 64), 10), ((8, 16), 10), ((4, 6), 3)])
def test_batchnorm_cnn_parameter_count(channels, num_classes):
    assert n_params(BatchNormCNN(channels, num_classes)) == bn_cnn_params(*channels, num_classes)


def test_batchnorm_cnn_default_parameter_count():
    assert n_params(BatchNormCNN()) == 800 + 64 + 51_200 + 128 + 10_250 == 62_442


@pytest.mark.parametrize("model_class", [SeedCNN, BatchNormCNN])
@pytest.mark.parametrize("num_classes", [10, 7])
def test_output_is_the_linear_head_of_the_flattened_features(model_class, num_classes):
    model = model_class(num_classes=num_classes).eval()
    x = torch.randn(3, 1, 28, 28)
    features = model.forward_features(x).flatten(1)
    head = model.fc2 if model_class is SeedCNN else model.fc  # the last linear layer
    expected = torch.nn.functional.linear(features, head.weight, head.bias)  # the reference
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (3, num_classes) and model(x[:1]).shape == (1, num_classes)
    torch.testing.assert_close(model(x[:1]), model(x)[:1])  # in eval mode, images do not interact


@pytest.mark.parametrize("model_class", [SeedCNN, BatchNormCNN])
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 28, 28), (2, 3, 28, 28), (0, 1, 28, 28), (784,)])
def test_wrong_input_shape_raises(model_class, shape):
    with pytest.raises(ValueError) as info:
        model_class()(torch.zeros(shape))
    message = str(info.value)
    assert "(B, 1, 28, 28)" in message and str(tuple(shape)) in message and model_class.__name__ in message


def test_check_image_shape_names_expected_shape():
    check_image_shape(torch.zeros(2, 3, 5, 5), (3, 5, 5), "M")  # accepted
    with pytest.raises(ValueError, match=r"M expects images of shape \(B, 3, 5, 5\), got \(2, 3, 5, 4\)"):
        check_image_shape(torch.zeros(2, 3, 5, 4), (3, 5, 5), "M")


@pytest.mark.parametrize("channels", [(32,), (32, 64, 128), (0, 64), (32, -1)])
def test_batchnorm_cnn_rejects_bad_channels(channels):
    with pytest.raises(ValueError, match="channels must be two positive integers"):
        BatchNormCNN(channels)


# --- twins: the same weights through torch.nn.functional ----------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seed_cnn_equals_article_forward_values_and_gradients(dtype):
    # SeedCNN pools before its ReLUs, the article after: the same numbers, to the last bit,
    # because max-pooling and ReLU commute and no arithmetic is reordered.
    torch.manual_seed(0)
    model = SeedCNN().to(dtype)
    x = torch.randn(5, 1, 28, 28, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = model(x), article_forward(model, x_ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)

    weights = torch.randn_like(y)  # a loss that weighs every logit differently
    grads = torch.autograd.grad((y * weights).sum(), [x, *model.parameters()])
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x_ref, *model.parameters()])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_article_view_folds_wrong_input_silently_but_seed_cnn_refuses():
    # Why SeedCNN checks shapes: the article's view(-1, 320) folds one 44x44 image,
    # (1, 20, 8, 8) = 1280 features after the convolutions, into 4 rows of logits without an error.
    model = SeedCNN()
    x = torch.randn(1, 1, 44, 44)
    assert article_forward(model, x).shape == (4, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(x)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_cnn_equals_functional_twin(training):
    torch.manual_seed(0)
    model = BatchNormCNN((6, 12)).double()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    model.train(training)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    y_ref = bn_cnn_forward(model, x)
    y = model(x)
    torch.testing.assert_close(y, y_ref)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, *model.parameters()])
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x, *model.parameters()])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref)


def test_models_return_logits_not_probabilities():
    torch.manual_seed(0)
    y = SeedCNN()(torch.randn(4, 1, 28, 28) * 10)
    assert not torch.allclose(y.exp().sum(1), torch.ones(4))
    assert not torch.allclose(y.sum(1), torch.ones(4))


@cuda_only
@pytest.mark.parametrize("model_class", [SeedCNN, BatchNormCNN])
def test_cuda_matches_cpu(model_class):
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.randn(8, 1, 28, 28)
    expected = model(x)
    got = model.cuda()(x.cuda())
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-2, atol=1e-2)  # cuDNN may convolve in TF32


def test_seed_cnn_article_order_is_the_same_function():
    torch.manual_seed(0)
    ours, theirs = SeedCNN(), SeedCNN(article_order=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(theirs(x), article_forward(theirs, x), rtol=0, atol=0)


def test_batch_norm_cnn_pool_before_norm_is_conv_pool_norm_relu():
    # Hand-written reference in train mode (batch statistics of the pooled values).
    torch.manual_seed(0)
    model = BatchNormCNN(channels=(4, 6), pool_before_norm=True).double()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)

    def block(x, conv, bn):
        pooled = F.max_pool2d(F.conv2d(x, conv.weight), 2)
        return F.relu(F.batch_norm(pooled, None, None, bn.weight, bn.bias, training=True, eps=bn.eps))

    h = block(block(x, model.conv1, model.bn1), model.conv2, model.bn2)
    torch.testing.assert_close(model(x), model.fc(h.flatten(1)), rtol=1e-12, atol=1e-12)


def test_batch_norm_cnn_pool_before_norm_is_another_function():
    torch.manual_seed(0)
    after, before = BatchNormCNN(channels=(4, 6)), BatchNormCNN(channels=(4, 6), pool_before_norm=True)
    before.load_state_dict(after.state_dict())
    x = torch.randn(5, 1, 28, 28)
    assert not torch.allclose(after(x), before(x), atol=1e-3)  # batch statistics of other values
