"""companion.lora: LoRA layers equal to PEFT's (the oracle) on the same A and B, and what apply_lora refuses."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from companion.attention import VisionTransformer
from companion.lora import LoRAConv2d, LoRALinear, apply_lora, lora_candidates, merge_lora

peft = pytest.importorskip("peft")  # a test requirement (requirements.txt); never a package dependency


class Net(nn.Module):
    """A Linear, a Conv2d with stride and padding, a 1 × 1 Conv2d, a depthwise Conv2d and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(torch.relu(self.depthwise(torch.relu(self.conv(x)))))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


def _pair(targets, rank=3, alpha=6.0):
    """One float64 network adapted twice: by apply_lora and by PEFT's get_peft_model (each on a copy),
    PEFT's A and B (B drawn nonzero, so that the LoRA path counts) copied into ours."""
    torch.manual_seed(0)
    base = Net().double()
    ours = apply_lora(copy.deepcopy(base), targets, rank, alpha, modules_to_save=["head"])
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), modules_to_save=["head"])
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name in targets:
            layer = theirs.base_model.model.get_submodule(name)
            layer.lora_B["default"].weight.normal_()
            ours.get_submodule(name).lora_A.weight.copy_(layer.lora_A["default"].weight)
            ours.get_submodule(name).lora_B.weight.copy_(layer.lora_B["default"].weight)
    return ours, theirs


@pytest.mark.parametrize("targets", [["fc"], ["conv"], ["pointwise"], ["conv", "pointwise", "fc"]])
def test_outputs_gradients_and_merged_weights_equal_peft(targets):
    ours, theirs = _pair(targets)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    for name in targets:
        mine, layer = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(mine.lora_A.weight.grad, layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(mine.lora_B.weight.grad, layer.lora_B["default"].weight.grad)
        torch.testing.assert_close(mine.delta_weight(), layer.get_delta_weight("default"))
    merged_theirs = theirs.merge_and_unload()
    merged_ours = merge_lora(ours)
    for name in targets:
        torch.testing.assert_close(merged_ours.get_submodule(name).weight, merged_theirs.get_submodule(name).weight)
    torch.testing.assert_close(merged_ours(x), out_theirs.detach())


def test_initialisation_is_peft_s():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(40, 30), rank=4, alpha=8)
    assert layer.scaling == 2.0 and (layer.lora_B.weight == 0).all()
    # kaiming_uniform_(a=√5) on fan_in = 40: bound = gain · √(3 / fan_in), gain = √(2 / (1 + a²)) = √(1/3)
    bound = math.sqrt(1 / 3) * math.sqrt(3 / 40)
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > 0.9 * bound
    x = torch.randn(7, 40)
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)  # B = 0: starts as the base


def test_conv_delta_weight_by_hand():
    layer = LoRAConv2d(nn.Conv2d(2, 3, 3, padding=1).double(), rank=2, alpha=1.0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    A, B = layer.lora_A.weight, layer.lora_B.weight[:, :, 0, 0]
    expected = torch.zeros(3, 2, 3, 3, dtype=torch.float64)
    for o in range(3):
        for i in range(2):
            for k in range(2):
                expected[o, i] += B[o, k] * A[k, i] * 0.5
    torch.testing.assert_close(layer.delta_weight(), expected)


@pytest.mark.parametrize("make", [
    lambda: LoRALinear(nn.Linear(6, 5).double(), 2, 4.0),
    lambda: LoRAConv2d(nn.Conv2d(3, 4, 3, stride=2, padding=1).double(), 2, 4.0),
])  # fmt: skip
def test_merged_equals_unmerged_and_unmerge_restores(make):
    layer = make()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) if isinstance(layer, LoRAConv2d) else torch.randn(4, 6).double()
    before, weight = layer(x), layer.base_layer.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), before)
    assert not torch.equal(layer.base_layer.weight, weight)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight)
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()


def test_only_lora_and_saved_parameters_train():
    model = apply_lora(Net(), ["conv", "fc"], rank=2, alpha=2.0, modules_to_save=["head"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "conv.lora_A.weight", "conv.lora_B.weight", "fc.lora_A.weight", "fc.lora_B.weight", "head.weight", "head.bias",
    }  # fmt: skip
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 2 * 3 * 9 + 8 * 2 + 2 * (6 + 5)


def test_merge_lora_restores_the_architecture_and_the_output():
    model = apply_lora(Net().double(), ["conv", "pointwise", "fc"], rank=2, alpha=3.0)
    for module in model.modules():
        if isinstance(module, LoRALinear | LoRAConv2d):
            nn.init.normal_(module.lora_B.weight)
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    before = model(x)
    merge_lora(model)
    assert type(model.conv) is nn.Conv2d and type(model.fc) is nn.Linear
    assert set(Net().state_dict()) == set(model.state_dict())
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="no LoRA layer"):
        merge_lora(model)


def test_the_vit_self_attention_projection_takes_lora():
    vit = VisionTransformer(embed_dim=16, depth=1, num_heads=2).double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    apply_lora(vit, ["in_proj", "out_proj"], rank=2, alpha=2.0, modules_to_save=["head"])
    for module in vit.modules():
        if isinstance(module, LoRALinear):
            nn.init.normal_(module.lora_B.weight)
    unmerged = vit(x)
    unmerged.sum().backward()
    assert vit.blocks[0].attn.in_proj.lora_A.weight.grad.abs().sum() > 0  # the LoRA path is used
    torch.testing.assert_close(merge_lora(vit)(x), unmerged.detach())


def test_candidates_leave_out_depthwise_convolutions():
    assert lora_candidates(Net()) == ["conv", "pointwise", "fc", "head"]
    assert lora_candidates(apply_lora(Net(), ["fc"], 1, 1.0)) == ["conv", "pointwise", "head"]  # fc is wrapped


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"rank": 0}, ValueError, "rank must be >= 1"),
    ({"rank": -2}, ValueError, "rank must be >= 1"),
    ({"rank": 2.0}, TypeError, "rank must be an int"),
    ({"alpha": 0.0}, ValueError, "alpha must be > 0"),
    ({"alpha": -1.0}, ValueError, "alpha must be > 0"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"target_modules": ["depthwise"]}, ValueError, "grouped or depthwise"),
    ({"target_modules": ["nothing"]}, ValueError, "no module of Net is named 'nothing'"),
    ({"target_modules": ["fc", "nothing"]}, ValueError, "'nothing'"),
    ({"target_modules": "fc"}, TypeError, "list of module names"),
    ({"modules_to_save": ["missing"]}, ValueError, "'missing'"),
    ({"modules_to_save": ["fc"]}, ValueError, "both targeted and saved"),
    ({"target_modules": []}, ValueError, "target_modules is empty"),
    ({"target_modules": (n for n in ["fc"])}, TypeError, "list of module names"),
    ({"target_modules": ["fc", "depthwise"]}, ValueError, "grouped or depthwise"),  # fc untouched too
])  # fmt: skip
def test_apply_lora_refuses_and_changes_nothing(kwargs, error, match):
    model = Net() if "model" not in kwargs else kwargs.pop("model")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    arguments = {"target_modules": ["fc"], "rank": 2, "alpha": 2.0} | kwargs
    with pytest.raises(error, match=match):
        apply_lora(model, **arguments)
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing wrapped
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_refusals_of_the_layers_themselves():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv2d(1, 1, 1), 1, 1.0)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        LoRAConv2d(nn.Linear(1, 1), 1, 1.0)
    with pytest.raises(ValueError, match="dilation"):
        LoRAConv2d(nn.Conv2d(2, 2, 3, dilation=2), 1, 1.0)
    with pytest.raises(ValueError, match="padding_mode"):
        LoRAConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), 1, 1.0)
    with pytest.raises(TypeError, match="'conv' is Sequential"):
        apply_lora(_Wrapper(), ["conv"], 1, 1.0)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(apply_lora(Net(), ["fc"], 1, 1.0), ["conv"], 1, 1.0)


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 1, 1))


def test_cross_attention_refuses_a_wrapped_in_proj():
    from companion.attention import MultiHeadAttention

    attention = MultiHeadAttention(8, 2, batch_first=True)
    apply_lora(attention, ["in_proj"], 1, 1.0)
    x, memory = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    assert attention(x, x, x)[0].shape == (2, 3, 8)  # self-attention goes through the wrapper
    with pytest.raises(TypeError, match="cross-attention"):
        attention(x, memory, memory)


class _Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, dilation=2)
        self.fc = nn.Linear(2, 2)


class _SameConv(nn.Conv2d):  # a subclass with its own padding: LoRA's A would not follow it
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


@pytest.mark.parametrize(("model", "targets", "error", "match"), [
    (_Dilated(), ["fc", "conv"], ValueError, "dilation"),
    (nn.Sequential(nn.Linear(2, 2), _SameConv(2, 2, 3)), ["0", "1"], TypeError, "not subclasses"),
    (nn.Sequential(nn.MultiheadAttention(4, 2)), ["out_proj"], ValueError, "MultiheadAttention"),
])  # fmt: skip
def test_layers_lora_cannot_follow_are_refused_and_nothing_changes(model, targets, error, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        apply_lora(model, targets, 1, 1.0)
    assert all(p.requires_grad for p in model.parameters())
    assert model.state_dict().keys() == before.keys()
    assert not any(isinstance(m, LoRALinear | LoRAConv2d) for m in model.modules())


def test_dropout_acts_on_lora_s_input_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(50, 3).double(), rank=2, alpha=2.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(4, 50, dtype=torch.float64)
    layer.eval()
    exact = layer.base_layer(x) + layer.lora_B(layer.lora_A(x)) * layer.scaling
    torch.testing.assert_close(layer(x), exact)  # no dropout in eval mode
    layer.train()
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    torch.manual_seed(1)
    expected = layer.base_layer(x) + layer.lora_B(layer.lora_A(dropped)) * layer.scaling
    torch.testing.assert_close(layer(x), expected)  # the base layer sees the whole input


def test_the_model_itself_is_never_a_candidate_nor_merged_alone():
    assert lora_candidates(nn.Linear(3, 4)) == []
    with pytest.raises(ValueError, match="call its merge"):
        merge_lora(LoRALinear(nn.Linear(3, 4), 1, 1.0))
