"""Attention from its equations against PyTorch, in float64: outputs, weights, gradients, masks, errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import (
    MultiHeadAttention,
    PatchEmbedding,
    TransformerBlock,
    VisionTransformer,
    additive_attention,
    attention_rollout,
    scaled_dot_product_attention,
)
from companion.utils import assert_same_values_and_grads

D = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# --- scaled dot-product ------------------------------------------------------------------------------------


def bool_mask(M, N, seed=1):
    mask = torch.rand(M, N, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[:, 0] = True  # every query may attend somewhere (PyTorch's result is undefined otherwise)
    return mask


@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "batched bool"])
def test_sdpa_equals_pytorch(mask_kind, precision):
    q, k, v = rand(2, 3, 5, 4), rand(2, 3, 6, 4, seed=1), rand(2, 3, 6, 7, seed=2)  # M != N, d_k != d_v
    mask = {None: None, "bool": bool_mask(5, 6), "float": rand(5, 6, seed=3),
            "batched bool": bool_mask(5, 6).expand(2, 1, 5, 6)}[mask_kind]  # fmt: skip
    if mask is not None:
        mask = mask.to(precision.device, precision.dtype if mask.is_floating_point() else torch.bool)
    precision.assert_same_values_and_grads(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=mask),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v, seed=42)  # fmt: skip


@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_scale_equals_pytorch(scale):
    q, k, v = rand(2, 5, 4), rand(2, 6, 4, seed=1), rand(2, 6, 3, seed=2)
    assert_same_values_and_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, scale=scale),
                lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=scale), q, k, v)  # fmt: skip


@pytest.mark.parametrize("kwargs", [{"dropout_p": 0.1}, {"enable_gqa": True}])
def test_sdpa_refuses_dropout_and_grouped_queries(kwargs):
    q = rand(2, 5, 4)
    with pytest.raises(ValueError, match="neither attention dropout nor grouped-query"):
        scaled_dot_product_attention(q, q, q, **kwargs)


def test_sdpa_weights_are_the_softmax_of_scaled_scores_by_hand():
    q, k, v = rand(1, 2, 3), rand(1, 4, 3, seed=1), rand(1, 4, 2, seed=2)
    out, weights = scaled_dot_product_attention(q, k, v, need_weights=True)
    expected = torch.softmax(q @ k.transpose(1, 2) / 3**0.5, dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, dtype=D))
    torch.testing.assert_close(out, expected @ v)


def test_sdpa_causal_equals_pytorch_and_ignores_later_tokens():
    x = rand(2, 6, 4)
    assert_same_values_and_grads(lambda x: scaled_dot_product_attention(x, x, x, is_causal=True),
                lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True), x)  # fmt: skip
    changed = x.clone()
    changed[:, 4:] = rand(2, 2, 4, seed=9)  # change tokens 4 and 5
    before = scaled_dot_product_attention(x, x, x, is_causal=True)
    after = scaled_dot_product_attention(changed, changed, changed, is_causal=True)
    torch.testing.assert_close(before[:, :4], after[:, :4])  # outputs 0..3 do not see tokens 4, 5
    assert not torch.allclose(before[:, 4:], after[:, 4:])


@pytest.mark.parametrize("mask", [torch.zeros(3, 4, dtype=torch.bool), torch.full((3, 4), float("-inf"), dtype=D)])
def test_fully_masked_rows_give_zero_weights_and_outputs_without_nan(mask):
    mask = mask.clone()
    mask[0] = True if mask.dtype == torch.bool else 0.0  # row 0 may attend everywhere, rows 1-2 nowhere
    q, k, v = rand(3, 2).requires_grad_(), rand(4, 2, seed=1).requires_grad_(), rand(4, 5, seed=2).requires_grad_()
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, need_weights=True)
    assert torch.equal(weights[1:], torch.zeros(2, 4, dtype=D)) and torch.equal(out[1:], torch.zeros(2, 5, dtype=D))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    torch.testing.assert_close(out[0], F.scaled_dot_product_attention(q[:1], k, v)[0].detach())


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((rand(2, 3, 4), rand(2, 5, 3), rand(2, 5, 6)), {}, "same d_k"),
    ((rand(2, 3, 4), rand(2, 5, 4), rand(2, 6, 6)), {}, "same N"),
    ((rand(2, 3, 4), rand(5, 4), rand(5, 6)), {}, "same rank"),
    ((rand(2, 3, 4), rand(2, 5, 4), rand(2, 5, 6)), {"attn_mask": torch.ones(4, 5, dtype=torch.bool)},
     r"attn_mask of shape \(4, 5\) does not broadcast to \(2, 3, 5\)"),
    ((rand(2, 3, 4), rand(2, 5, 4), rand(2, 5, 6)), {"is_causal": True}, "is_causal needs M == N"),
])  # fmt: skip
def test_sdpa_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(*args, **kwargs)


# --- additive -------------------------------------------------------------------------------------------------


def test_additive_attention_by_its_definition():
    q, keys, values = rand(2, 3), rand(2, 5, 4, seed=1), rand(2, 5, 6, seed=2)
    w_q, w_k, v = rand(7, 3, seed=3), rand(7, 4, seed=4), rand(7, seed=5)
    context, weights = additive_attention(q, keys, values, w_q, w_k, v)
    for b in range(2):
        e = torch.stack([v @ torch.tanh(w_q @ q[b] + w_k @ keys[b, n]) for n in range(5)])
        alpha = torch.exp(e) / torch.exp(e).sum()
        torch.testing.assert_close(weights[b], alpha)
        torch.testing.assert_close(context[b], sum(alpha[n] * values[b, n] for n in range(5)))  # index n, not t


def test_additive_attention_many_queries_and_mask():
    q, keys, values = rand(2, 3, 3), rand(2, 5, 4, seed=1), rand(2, 5, 6, seed=2)
    w_q, w_k, v = rand(7, 3, seed=3), rand(7, 4, seed=4), rand(7, seed=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    context, weights = additive_attention(q, keys, values, w_q, w_k, v, mask=mask)
    assert context.shape == (2, 3, 6) and weights.shape == (2, 3, 5)
    assert torch.equal(weights[1, :, 3:], torch.zeros(3, 2, dtype=D))
    one, _ = additive_attention(q[:, 1], keys, values, w_q, w_k, v, mask=mask)
    torch.testing.assert_close(one, context[:, 1])


def test_additive_attention_errors():
    q, keys, values = rand(2, 3), rand(2, 5, 4), rand(2, 5, 6)
    with pytest.raises(ValueError, match="expected query"):
        additive_attention(q, keys, values[:, :4], rand(7, 3), rand(7, 4), rand(7))
    with pytest.raises(ValueError, match=r"expected weight_query \(A, 3\)"):
        additive_attention(q, keys, values, rand(7, 2), rand(7, 4), rand(7))
    with pytest.raises(ValueError, match="expected mask"):
        additive_attention(q, keys, values, rand(7, 3), rand(7, 4), rand(7), mask=torch.ones(2, 4, dtype=torch.bool))


# --- multi-head ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "causal bool", "both", "float", "per-head"])
def test_multi_head_attention_equals_pytorch(batch_first, masks):
    torch.manual_seed(0)
    B, M, N, E, H = 3, 4, 5, 8, 2  # B, M, N all different
    reference = nn.MultiheadAttention(E, H, batch_first=batch_first).double()
    ours = MultiHeadAttention.from_torch(reference)
    q = rand(B, M, E) if batch_first else rand(M, B, E)
    kv = rand(B, N, E, seed=1) if batch_first else rand(N, B, E, seed=1)
    padding = torch.zeros(B, N, dtype=torch.bool)
    padding[0, 3:] = True
    causal = torch.ones(M, N, dtype=torch.bool).triu(1)
    kwargs = {"none": {}, "padding": {"key_padding_mask": padding}, "causal bool": {"attn_mask": causal},
              "both": {"key_padding_mask": padding, "attn_mask": causal}, "float": {"attn_mask": rand(M, N, seed=3)},
              "per-head": {"attn_mask": rand(B * H, M, N, seed=4)}}[masks]  # fmt: skip
    for average in (True, False):
        out_a, w_a = ours(q, kv, kv, average_attn_weights=average, **kwargs)
        out_b, w_b = reference(q, kv, kv, average_attn_weights=average, **kwargs)
        torch.testing.assert_close(out_a, out_b)
        torch.testing.assert_close(w_a, w_b)
    assert_same_values_and_grads(lambda q, kv: ours(q, kv, kv, **kwargs)[0], lambda q, kv: reference(q, kv, kv, **kwargs)[0], q, kv)
    out_a, _ = ours(q, kv, kv, **kwargs)
    (out_a**2).sum().backward()
    out_b, _ = reference(q, kv, kv, **kwargs)
    (out_b**2).sum().backward()
    torch.testing.assert_close(ours.in_proj.weight.grad, reference.in_proj_weight.grad)
    torch.testing.assert_close(ours.out_proj.weight.grad, reference.out_proj.weight.grad)


def test_multi_head_attention_errors():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be a positive multiple of num_heads \(3\)"):
        MultiHeadAttention(10, 3, batch_first=True)
    mha = MultiHeadAttention(8, 2, batch_first=True)
    x = rand(2, 5, 8).float()
    with pytest.raises(ValueError, match=r"expected query of shape \(B, T, D\) with D=8, got \(2, 5, 6\)"):
        mha(x[..., :6], x, x)
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(2, 5\), got \(2, 4\)"):
        mha(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected attn_mask of shape \(5, 5\) or \(4, 5, 5\)"):
        mha(x, x, x, attn_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="disagree"):
        mha(x, x, x[:, :4])


def test_need_weights_false_returns_none():
    out, weights = MultiHeadAttention(8, 2, batch_first=True)(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8), need_weights=False)
    assert weights is None and out.shape == (1, 3, 8)


# --- patches, blocks, ViT --------------------------------------------------------------------------------------


def test_patch_embedding_equals_an_unfold_reference():
    torch.manual_seed(0)
    embed = PatchEmbedding(image_size=28, patch_size=7, in_channels=2, embed_dim=5).double()
    x = rand(3, 2, 28, 28)
    patches = x.unfold(2, 7, 7).unfold(3, 7, 7)  # (B, C, 4, 4, 7, 7)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(3, 16, 2 * 49)  # row-major patches, each (C, P, P) flattened
    reference = patches @ embed.proj.weight.reshape(5, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(x), reference)


def test_patch_embedding_errors():
    with pytest.raises(ValueError, match=r"image_size \(28\) must be divisible by patch_size \(5\)"):
        PatchEmbedding(28, 5)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        PatchEmbedding(28, 7)(torch.zeros(2, 1, 32, 32))


def test_transformer_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2).double()
    x = rand(2, 5, 8)
    h = block.norm1(x)
    x1 = x + block.attn(h, h, h)[0]
    expected = x1 + block.mlp(block.norm2(x1))
    torch.testing.assert_close(block(x), expected)
    out, weights = block(x, return_attention=True)
    assert weights.shape == (2, 2, 5, 5)


def test_vision_transformer_shapes_and_parts():
    torch.manual_seed(0)
    vit = VisionTransformer(patch_size=7, embed_dim=16, depth=2, num_heads=2).double()
    x = rand(3, 1, 28, 28)
    features = vit.forward_features(x)
    assert features.shape == (3, 17, 16)
    torch.testing.assert_close(vit(x), vit.head(features[:, 0]))
    maps = vit.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 2, 17, dtype=D))


def test_vision_transformer_is_batch_independent():
    torch.manual_seed(0)
    vit = VisionTransformer(embed_dim=16, depth=1, num_heads=2).double().eval()
    x = rand(4, 1, 28, 28)
    torch.testing.assert_close(vit(x), torch.cat([vit(x[i : i + 1]) for i in range(4)]))


def test_attention_rollout_by_hand():
    a = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]], dtype=D)
    mixed = (a[0] + torch.eye(2, dtype=D)) / 2  # rows already sum to 1
    torch.testing.assert_close(attention_rollout([a]), mixed[None])
    torch.testing.assert_close(attention_rollout([a, a]), (mixed @ mixed)[None])
    heads = torch.stack([a[0], torch.eye(2, dtype=D)])[None]  # (1, 2 heads, 2, 2): averaged first
    torch.testing.assert_close(attention_rollout([heads]), ((heads.mean(1)[0] + torch.eye(2, dtype=D)) / 2)[None])
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="square maps of one shape"):
        attention_rollout([a, torch.ones(1, 3, 3, dtype=D)])


def test_additive_attention_rejects_batch_and_projection_mismatches():
    with pytest.raises(ValueError, match="differ in batch size"):
        additive_attention(rand(1, 3), rand(4, 5, 4), rand(4, 5, 6), rand(7, 3), rand(7, 4), rand(7))
    with pytest.raises(ValueError, match=r"expected weight_query \(A, 3\), weight_key \(A, 4\)"):
        additive_attention(rand(2, 3), rand(2, 5, 4), rand(2, 5, 6), rand(7, 3), rand(6, 4), rand(6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vit_and_attention_on_cuda_match_cpu():
    torch.manual_seed(0)
    vit = VisionTransformer(embed_dim=16, depth=1, num_heads=2).eval()
    x = torch.randn(2, 1, 28, 28)
    expected = vit(x)
    torch.testing.assert_close(vit.cuda()(x.cuda()).cpu(), expected, rtol=1e-3, atol=1e-4)
    q = torch.randn(2, 4, 8, device="cuda")
    mask = torch.zeros(4, 4, dtype=torch.bool, device="cuda")
    out, weights = scaled_dot_product_attention(q, q, q, attn_mask=mask, need_weights=True)
    assert out.device.type == "cuda" and torch.equal(weights, torch.zeros_like(weights))


# --- refusals: options the from-scratch modules do not implement ----------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"dropout": 0.1}, "dropout=0.1"),
    ({"kdim": 8, "vdim": 8}, "kdim=8"),
    ({"add_bias_kv": True}, "add_bias_kv"),
    ({"add_zero_attn": True}, "add_zero_attn=True"),
])  # fmt: skip
def test_mha_from_torch_refuses_what_it_does_not_implement(kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(16, 4, **kwargs))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_masks_are_refused_not_added(dtype):
    q = torch.randn(2, 3, 8)
    mask = torch.zeros(3, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"attn_mask must be boolean or floating point.*\.bool\(\)"):
        scaled_dot_product_attention(q, q, q, attn_mask=mask)
    mha = MultiHeadAttention(8, 2, batch_first=True)
    with pytest.raises(TypeError, match="boolean or floating point"):
        mha(q, q, q, attn_mask=mask)
    with pytest.raises(TypeError, match="boolean or floating point"):
        mha(q, q, q, key_padding_mask=torch.zeros(2, 3, dtype=dtype))
    with pytest.raises(TypeError, match="mask must be boolean"):
        additive_attention(q[:, 0], q, q, torch.randn(5, 8), torch.randn(5, 8), torch.randn(5), mask=torch.ones(2, 3))


def test_transformer_block_equals_pytorchs_pre_norm_encoder_layer():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=40, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True, layer_norm_eps=1e-6).double()  # fmt: skip
    block = TransformerBlock.from_torch(layer)
    x = torch.randn(3, 7, 16, dtype=torch.float64)  # B != N
    x_a, x_b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = block(x_a), layer(x_b)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-12)
    probe = torch.randn_like(out_a)
    (out_a * probe).sum().backward()
    (out_b * probe).sum().backward()
    torch.testing.assert_close(x_a.grad, x_b.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(block.mlp[0].weight.grad, layer.linear1.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(block.attn.in_proj.weight.grad, layer.self_attn.in_proj_weight.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"norm_first": False}, "norm_first=False"),
    ({"activation": "relu"}, "activation="),
    ({"dropout": 0.1}, "dropout=0.1"),
    ({"batch_first": False}, "batch_first=False"),
    ({"bias": False}, "bias=False"),
])  # fmt: skip
def test_transformer_block_from_torch_refuses_other_layers(kwargs, named):
    settings = dict(dropout=0.0, activation="gelu", batch_first=True, norm_first=True) | kwargs
    with pytest.raises(ValueError, match=re.escape(named)):
        TransformerBlock.from_torch(nn.TransformerEncoderLayer(16, 4, 32, **settings))


def test_scaled_dot_product_attention_returns_what_pytorch_returns_and_weights_on_request():
    q, k, v = rand(2, 3, 4), rand(2, 5, 4, seed=1), rand(2, 5, 6, seed=2)
    out = scaled_dot_product_attention(q, k, v)
    assert isinstance(out, torch.Tensor)  # like F.scaled_dot_product_attention: the output alone
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    same, weights = scaled_dot_product_attention(q, k, v, need_weights=True)
    torch.testing.assert_close(same, out)
    torch.testing.assert_close(weights, (q @ k.transpose(-2, -1) / 2).softmax(-1))  # 1/sqrt(d_k) = 1/2
    with pytest.raises(TypeError):
        scaled_dot_product_attention(q, k, v, None, 0.0, False, None, False, True)  # need_weights is keyword only


def test_multi_head_attention_needs_batch_first_said_and_bias_by_keyword():
    with pytest.raises(TypeError, match="batch_first"):
        MultiHeadAttention(8, 2)  # no default: nn.MultiheadAttention's is False, the book's layout is (B, T, D)
    with pytest.raises(TypeError):
        MultiHeadAttention(8, 2, False, batch_first=True)  # PyTorch's third positional is dropout, not bias
    assert MultiHeadAttention(8, 2, bias=False, batch_first=False).in_proj.bias is None


def test_vision_transformer_equals_torchvisions_with_copied_weights():
    """The oracle for the whole ViT: torchvision's VisionTransformer (pre-norm, class token, GELU MLP)."""
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    from companion.attention import VisionTransformer

    torch.manual_seed(0)
    theirs = TorchvisionViT(image_size=28, patch_size=7, num_layers=2, num_heads=4, hidden_dim=16, mlp_dim=32,
                            num_classes=10).double().eval()  # fmt: skip
    ours = VisionTransformer(image_size=28, patch_size=7, in_channels=3, num_classes=10, embed_dim=16, depth=2,
                             num_heads=4, mlp_ratio=2.0).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in theirs.parameters():  # torchvision zero-initialises the head and the class token
            p.normal_(0, 0.2)
        ours.patch_embed.proj.load_state_dict(theirs.conv_proj.state_dict())
        ours.cls_token.copy_(theirs.class_token)
        ours.pos_embed.copy_(theirs.encoder.pos_embedding)
        for block, layer in zip(ours.blocks, theirs.encoder.layers, strict=True):
            block.norm1.load_state_dict(layer.ln_1.state_dict())
            block.norm2.load_state_dict(layer.ln_2.state_dict())
            block.norm1.eps, block.norm2.eps = layer.ln_1.eps, layer.ln_2.eps  # torchvision: 1e-6
            block.attn = MultiHeadAttention.from_torch(layer.self_attention)
            block.mlp[0].load_state_dict(layer.mlp[0].state_dict())
            block.mlp[2].load_state_dict(layer.mlp[3].state_dict())
        ours.norm.load_state_dict(theirs.encoder.ln.state_dict())
        ours.norm.eps = theirs.encoder.ln.eps
        ours.head.load_state_dict(theirs.heads.head.state_dict())
    x = torch.randn(3, 3, 28, 28, dtype=torch.float64)
    assert_same_values_and_grads(lambda t: ours(t), lambda t: theirs(t), x)  # values and input gradients, float64
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(ours.pos_embed.grad, theirs.encoder.pos_embedding.grad)
    torch.testing.assert_close(ours.blocks[0].attn.in_proj.weight.grad, theirs.encoder.layers[0].self_attention.in_proj_weight.grad)
