"""Fine-tuning tools (also on torchvision models, weights=None), balanced subsets, frozen features and SimCLR."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from companion.attention import VisionTransformer
from companion.cnn import BatchNormCNN, SeedCNN
from companion.augment import cutout, random_affine
from companion.data import DeviceLoader, balanced_subset
from companion.evaluation import extract_features, extract_layer_features
from companion.finetune import find_head, freeze, param_groups, replace_head, unfreeze
from companion.simclr import SimCLR, nt_xent_loss, pretrain_simclr
from companion.train import NonFiniteLossError
from companion.summary import count_parameters

HEADS = [
    (lambda: torchvision.models.resnet18(weights=None), "fc", 512),
    (lambda: torchvision.models.vgg11(weights=None), "classifier.6", 4096),
    (lambda: torchvision.models.mobilenet_v3_small(weights=None), "classifier.3", 1024),
    (lambda: torchvision.models.vit_b_16(weights=None), "heads.head", 768),
    (SeedCNN, "fc2", 50),
    (BatchNormCNN, "fc", 1024),
    (lambda: VisionTransformer(embed_dim=16, depth=1, num_heads=2), "head", 16),
]


@pytest.mark.parametrize(("build", "name", "in_features"), HEADS)
def test_find_head_is_the_classifier_of_known_architectures(build, name, in_features):
    model = build()
    assert find_head(model) == name
    assert model.get_submodule(name).in_features == in_features


def test_replace_head_on_a_frozen_torchvision_resnet_leaves_only_the_head_trainable():
    model = freeze(torchvision.models.resnet18(weights=None))
    assert count_parameters(model, trainable_only=True) == 0
    head = replace_head(model, num_classes=7)
    assert model.fc is head and head.out_features == 7 and head.in_features == 512
    assert count_parameters(model, trainable_only=True) == 512 * 7 + 7
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 7)
    unfreeze(model)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_replace_head_inside_a_sequential_and_by_name():
    model = torchvision.models.vgg11(weights=None)
    head = replace_head(model, 3)
    assert model.classifier[6] is head
    vit = torchvision.models.vit_b_16(weights=None)
    assert replace_head(vit, 5, name="heads.head") is vit.heads.head


def test_replace_head_under_a_shared_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2, 3))
    model.alias = model[2]  # the same module under a second name
    head = replace_head(model, 5, name="alias")
    assert model.alias is head and head.out_features == 5


def test_replace_head_errors():
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(BatchNormCNN(), 0)
    with pytest.raises(ValueError, match="'bn1' must name an nn.Linear of BatchNormCNN, found BatchNorm2d"):
        replace_head(BatchNormCNN(), 3, name="bn1")
    with pytest.raises(ValueError, match="found nothing"):
        replace_head(BatchNormCNN(), 3, name="missing")
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_head(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_param_groups_split_head_and_body_and_skip_frozen_parameters():
    model = torchvision.models.resnet18(weights=None)
    groups = param_groups(model, lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    assert [g["name"] for g in groups] == ["head", "body"]
    assert {id(p) for p in groups[0]["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model)
    optimizer = torch.optim.AdamW(groups)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-4]
    freeze(model.layer1)
    body = param_groups(model, 1e-4, 1e-2)[1]["params"]
    assert not any(p is q for p in body for q in model.layer1.parameters())
    freeze(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 1e-4, 1e-2)


def test_param_groups_errors():
    model = BatchNormCNN()
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        param_groups(model, 0.0, 1e-3)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, 1e-3, 1e-3, weight_decay=-1)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        param_groups(model, 1e-3, 1e-3, head="nope")


def test_only_the_unfrozen_head_changes_in_a_training_step():
    torch.manual_seed(0)
    model = freeze(BatchNormCNN(channels=(4, 8)))
    replace_head(model, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, head_lr=0.1), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"fc.weight", "fc.bias"} <= changed
    assert not {k for k in changed if k.startswith("conv")}


def test_balanced_subset_takes_per_class_samples_of_every_class_reproducibly():
    labels = torch.tensor([0, 1, 2] * 10)
    index = balanced_subset(labels, 4, seed=3)
    assert torch.bincount(labels[index]).tolist() == [4, 4, 4]
    assert len(set(index.tolist())) == 12
    assert torch.equal(index, balanced_subset(labels, 4, seed=3))
    assert not torch.equal(index, balanced_subset(labels, 4, seed=4))
    with pytest.raises(ValueError, match="class 2 has 1 samples"):
        balanced_subset(torch.tensor([0, 0, 1, 1, 2]), 2)
    with pytest.raises(ValueError, match="per_class"):
        balanced_subset(labels, 0)


def test_extract_features_matches_forward_features_in_eval_mode():
    torch.manual_seed(0)
    model = BatchNormCNN(channels=(4, 8)).train()
    x, y = torch.randn(10, 1, 28, 28), torch.arange(10)
    features, labels = extract_features(model, DeviceLoader(x, y, 4, device="cpu"), "cpu")
    assert model.training  # mode restored
    with torch.no_grad():
        expected = model.eval().forward_features(x).flatten(1)
    torch.testing.assert_close(features, expected)
    assert features.shape == (10, 8 * 16) and torch.equal(labels, y)
    with pytest.raises(TypeError, match="forward_features"):  # a plain nn.Sequential has none (every book network has)
        extract_features(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), [(x, y)], "cpu")
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [], "cpu")


def test_extract_layer_features_equals_torchvision_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).double().train()
    x, y = torch.randn(6, 3, 40, 40, dtype=torch.float64), torch.arange(6)
    layers = ["layer2", "layer1.0.conv1", "fc"]
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    features, labels = extract_layer_features(model, batches, layers, "cpu")
    assert model.training and list(features) == layers and torch.equal(labels, y)
    assert not model.layer2._forward_hooks  # hooks removed
    with torch.no_grad():
        reference = create_feature_extractor(model.eval(), {name: name for name in layers})(x)
    for name in layers:
        expected = reference[name].mean((2, 3)) if reference[name].ndim == 4 else reference[name]
        torch.testing.assert_close(features[name], expected.float(), rtol=0, atol=1e-6)
    assert features["layer2"].shape == (6, 128) and features["fc"].shape == (6, 10)


def test_extract_layer_features_last_block_is_forward_features_and_refusals():
    from companion.modern_cnn import EfficientCNN

    torch.manual_seed(0)
    model = EfficientCNN("mbconv", (4, 8, 16), blocks_per_stage=1)
    x, y = torch.randn(5, 1, 28, 28), torch.arange(5)
    features, _ = extract_layer_features(model, [(x, y)], ["blocks.2", "stem"], "cpu")
    with torch.no_grad():
        torch.testing.assert_close(features["blocks.2"], model.eval().forward_features(x))
    assert features["stem"].shape == (5, 4)
    for bad in ([], ["stem", "stem"], ["nope"]):
        with pytest.raises(ValueError, match="distinct names of submodules"):
            extract_layer_features(model, [(x, y)], bad, "cpu")
    with pytest.raises(ValueError, match="no batches"):
        extract_layer_features(model, [], ["stem"], "cpu")
    flat = nn.Sequential(nn.Flatten(0), nn.Identity())  # a 1-D output
    with pytest.raises(ValueError, match=r"layer '1' must output a \(B, D\)"):
        extract_layer_features(flat, [(x, y)], ["1"], "cpu")
    assert not flat[1]._forward_hooks  # removed although the hook raised
    resnet = torchvision.models.resnet18(weights=None)
    images = torch.randn(3, 3, 32, 32)
    # layer1.0.relu runs twice in its block; layer4 of an unused branch never runs
    with pytest.raises(ValueError, match=r"exactly once per forward pass.*'layer1.0.relu': 2"):
        extract_layer_features(resnet, [(images, y[:3])], ["layer1.0.relu"], "cpu")
    unused = nn.ModuleDict({"used": nn.Conv2d(1, 2, 3), "spare": nn.Conv2d(1, 2, 3)})
    unused.forward = lambda x: unused["used"](x)
    with pytest.raises(ValueError, match=r"exactly once per forward pass.*'spare': 0"):
        extract_layer_features(unused, [(x, y)], ["used", "spare"], "cpu")
    assert not resnet.layer1[0].relu._forward_hooks


def _nt_xent_reference(z1, z2, temperature):
    z = torch.cat([nn.functional.normalize(z1, dim=1), nn.functional.normalize(z2, dim=1)])
    n, total = len(z1), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator)
    return total / (2 * n)


def test_nt_xent_equals_the_papers_formula_written_as_loops():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for temperature in (0.1, 0.5, 2.0):
        assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(_nt_xent_reference(z1, z2, temperature), rel=1e-12)


def test_nt_xent_known_values():
    # All embeddings equal: every similarity is 1, the loss is log(2B - 1).
    z = torch.ones(4, 2)
    assert nt_xent_loss(z, z).item() == pytest.approx(math.log(7))
    # Views identical and images orthogonal: the loss falls towards 0 as the temperature falls.
    eye = torch.eye(4)
    assert nt_xent_loss(eye, eye, 0.05).item() < 1e-6


def test_nt_xent_errors():
    with pytest.raises(ValueError, match="B >= 2"):
        nt_xent_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="both be"):
        nt_xent_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.ones(2, 3), torch.ones(2, 3), 0)


def test_pretrain_simclr_lowers_the_contrastive_loss_on_a_small_batch_set():
    torch.manual_seed(0)
    x = nn.functional.interpolate(torch.randn(64, 1, 4, 4), size=28, mode="bilinear")  # 64 smooth, distinct images
    loader = DeviceLoader(x, torch.zeros(64, dtype=torch.long), 32, shuffle=True, device="cpu")
    model = BatchNormCNN(channels=(4, 8))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = pretrain_simclr(model, loader, epochs=10, device="cpu", lr=1e-2, progress=False)
    assert len(history) == len(history.seconds) == 10 and history.epoch == list(range(1, 11))
    assert history.train_loss[-1] < 0.8 * history.train_loss[0]
    assert all(l <= math.log(2 * 32 - 1) + 0.5 for l in history.train_loss)
    assert all(math.isnan(a) for a in history.train_accuracy + history.val_accuracy)  # no labels
    assert not torch.equal(start["conv1.weight"], model.state_dict()["conv1.weight"])
    with pytest.raises(ValueError, match="epochs"):
        pretrain_simclr(model, loader, epochs=0, device="cpu")


def test_pretrain_simclr_one_step_equals_a_hand_written_sgd_step():
    """The reference: SimCLR's two views (one seeded generator, view 1 then view 2), the NT-Xent loss of
    their projections, one SGD step on every parameter that has a gradient, batch norms in training mode."""
    import copy

    torch.manual_seed(0)
    x = nn.functional.interpolate(torch.randn(8, 1, 4, 4), size=28, mode="bilinear")
    backbone = BatchNormCNN(channels=(4, 8))
    by_hand, initial = copy.deepcopy(backbone), backbone.conv1.weight.detach().clone()
    loader = DeviceLoader(x, torch.zeros(8, dtype=torch.long), 8, shuffle=False, device="cpu")
    torch.manual_seed(1)  # the projection head's initial weights
    pretrain_simclr(backbone, loader, epochs=1, device="cpu", optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                    progress=False)  # fmt: skip

    batch, _ = next(iter(loader))
    with torch.no_grad():
        feature_size = by_hand.eval().forward_features(batch).flatten(1).shape[1]
    torch.manual_seed(1)
    model = SimCLR(by_hand, feature_size).train()
    z = model(model.views(batch))
    nt_xent_loss(z[:8], z[8:], model.temperature).backward()
    with torch.no_grad():
        for parameter in by_hand.parameters():
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
    assert by_hand.conv1.weight.grad is not None and by_hand.fc.weight.grad is None  # the classifier is unused
    for (name, ours), expected in zip(backbone.state_dict().items(), by_hand.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(backbone.conv1.weight, initial)  # the step moved the weights


def test_pretrain_simclr_restores_the_mode_and_names_its_input_errors():
    x, y = torch.randn(9, 1, 28, 28), torch.zeros(9, dtype=torch.long)
    model = BatchNormCNN(channels=(2, 4)).eval()
    pretrain_simclr(model, DeviceLoader(x, y, 4, drop_last=True, device="cpu"), epochs=1, device="cpu", progress=False)
    assert not model.training
    with pytest.raises(ValueError, match="got a batch of 1; use DeviceLoader"):
        pretrain_simclr(model, DeviceLoader(x, y, 4, device="cpu"), epochs=1, device="cpu", progress=False)  # 4 + 4 + 1
    with pytest.raises(TypeError, match="re-iterable with a length"):
        pretrain_simclr(model, ((x[:4], y[:4]) for _ in range(2)), epochs=1, device="cpu")
    with pytest.raises(TypeError, match="forward_features"):
        pretrain_simclr(nn.Sequential(nn.Flatten(), nn.Linear(784, 8)), DeviceLoader(x, y, 4, device="cpu"), epochs=1,
                        device="cpu")  # fmt: skip
    with pytest.raises(ValueError, match="lr must be > 0"):
        pretrain_simclr(model, DeviceLoader(x, y, 4, drop_last=True, device="cpu"), epochs=1, device="cpu", lr=0)
    nan_images = torch.full((8, 1, 28, 28), float("nan"))
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 1 "):
        pretrain_simclr(model, DeviceLoader(nan_images, y[:8], 4, device="cpu"), epochs=1, device="cpu", progress=False)


def test_pretrain_simclr_with_an_optimizer_factory_trains_backbone_and_head():
    torch.manual_seed(0)
    x = nn.functional.interpolate(torch.randn(32, 1, 4, 4), size=28, mode="bilinear")
    loader = DeviceLoader(x, torch.zeros(32, dtype=torch.long), 16, shuffle=True, drop_last=True, device="cpu")
    model = BatchNormCNN(channels=(2, 4))
    given = []

    def factory(params):
        params = list(params)
        given.extend(params)
        return torch.optim.SGD(params, lr=0.05)

    before = model.conv1.weight.detach().clone()
    history = pretrain_simclr(model, loader, epochs=1, device="cpu", optimizer=factory, progress=False)
    assert len(history) == 1
    assert not torch.equal(before, model.conv1.weight)
    # the factory saw the projection head's parameters too (backbone 2x conv + 2x BN + fc, head 2 linear + BN)
    assert len(given) == len(list(model.parameters())) + 6


def test_headless_returns_what_the_head_receives_and_leaves_the_model_alone():
    from companion.finetune import Headless

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    features = Headless(net).eval()
    assert features.head_name == "fc" and isinstance(net.fc, nn.Linear)  # the original keeps its head
    with torch.no_grad():
        got = features.forward_features(x)
        torch.testing.assert_close(net.fc(got), net(x))  # the head applied to them gives the logits
    assert got.shape == (2, 512)
    seed_cnn = SeedCNN().eval()
    assert Headless(seed_cnn, head="fc2")(torch.zeros(3, 1, 28, 28)).shape == (3, 50)
    with pytest.raises(ValueError, match="has no module 'classifier.9'"):
        Headless(seed_cnn, head="classifier.9")


def test_linear_probe_separates_separable_features_and_standardises_with_training_statistics():
    from companion.finetune import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 8, generator=g) * 50 + 100  # far from standardised
    x = x[((x[:, :2] - 100).abs() > 15).all(1)][:600]  # a margin around the class boundaries
    y = (x[:, 0] > 100).long() + 2 * (x[:, 1] > 100).long()  # 4 classes, linearly separable
    result = linear_probe(x[:400], y[:400], x[400:], y[400:], steps=300, lr=3e-2, device="cpu")
    assert result.accuracy >= 0.95
    torch.testing.assert_close(result.mean, x[:400].mean(0))
    logits = result.head((x[400:] - result.mean) / result.std)
    assert (logits.argmax(1) == y[400:]).float().mean().item() == pytest.approx(result.accuracy)
    again = linear_probe(x[:400], y[:400], x[400:], y[400:], steps=300, lr=3e-2, device="cpu")
    torch.testing.assert_close(again.head.weight, result.head.weight)  # seeded


def test_linear_probe_errors():
    from companion.finetune import linear_probe

    x, y = torch.zeros(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"train_features must be \(N, D\)"):
        linear_probe(x, y[:5], x, y)
    with pytest.raises(ValueError, match="differ in width"):
        linear_probe(x, y, torch.zeros(10, 3), y)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        linear_probe(x, y, x, y, steps=0)


def test_linear_probe_leaves_a_feature_that_is_constant_in_training_unscaled():
    from companion.finetune import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g)
    y = (x[:, 0] > 0).long()
    x[:100, 2] = 0.0  # a ReLU that never fired on the training half ...
    x[100:, 2] = 5.0  # ... fires on every test sample
    result = linear_probe(x[:100], y[:100], x[100:], y[100:], steps=200, lr=3e-2, device="cpu")
    assert result.std[2] == 1.0 and result.std[0] != 1.0
    assert result.accuracy >= 0.9  # not swamped by the test-only feature
    with pytest.raises(ValueError, match="at least 2 training samples"):
        linear_probe(x[:1], y[:1], x, y)


def test_freeze_batch_norm_keeps_the_eval_output_in_training_mode():
    from torchvision.ops import FrozenBatchNorm2d

    from companion.finetune import freeze_batch_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, eps=1e-3), nn.ReLU(), nn.BatchNorm2d(4, affine=False))
    model.train()
    model(torch.randn(8, 2, 6, 6) * 3 + 1)  # running statistics away from (0, 1)
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
    x = torch.randn(5, 2, 6, 6)
    expected = model.eval()(x)
    freeze_batch_norm(model).train()
    assert isinstance(model[1], FrozenBatchNorm2d) and model[1].eps == 1e-3
    torch.testing.assert_close(model(x), expected)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]


def test_freeze_batch_norm_refuses_a_norm_without_running_statistics():
    from companion.finetune import freeze_batch_norm

    model = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="'1' has no running statistics"):
        freeze_batch_norm(model)
    assert isinstance(model[0], nn.BatchNorm2d)  # nothing replaced


def test_freeze_batch_norm_keeps_the_dtype():
    from companion.finetune import freeze_batch_norm

    model = freeze_batch_norm(nn.Sequential(nn.BatchNorm2d(3)).double().eval())
    assert model[0].running_mean.dtype == torch.float64
    assert model(torch.randn(1, 3, 2, 2, dtype=torch.float64)).dtype == torch.float64
