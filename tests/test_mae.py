"""companion.mae: MAE's masking, patches and loss by their definitions, and its encoder against the ViT's."""

from __future__ import annotations

import pytest
import torch

from companion.attention import VisionTransformer
from companion.data import DeviceLoader
from companion.mae import MaskedAutoencoder, masked_patch_loss, patchify, pretrain_mae, random_masking, unpatchify


def test_patchify_is_the_flatten_of_each_patch_and_unpatchify_its_inverse():
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right 4 x 4 block, rows then columns then channels
    torch.testing.assert_close(patches[1, 1], images[1, :, :4, 4:].permute(1, 2, 0).reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patches, 4, channels=3), images, rtol=0, atol=0)


def test_patch_order_is_the_patch_embeddings_token_order():
    # PatchEmbedding is a convolution with kernel = stride = P: token n must see patch n
    vit = VisionTransformer(patch_size=7).double()
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    weight = vit.patch_embed.proj.weight.reshape(64, -1)  # (D, P·P·C), C = 1
    expected = patchify(images, 7) @ weight.T + vit.patch_embed.proj.bias
    torch.testing.assert_close(vit.patch_embed(images), expected)


def test_random_masking_keeps_the_smallest_noise_and_restores_the_order():
    tokens = torch.arange(2 * 10, dtype=torch.float64).reshape(2, 10, 1).expand(-1, -1, 3).contiguous()
    generator = torch.Generator().manual_seed(0)
    visible, mask, ids_restore = random_masking(tokens, 0.75, generator)
    noise = torch.rand(2, 10, generator=torch.Generator().manual_seed(0))  # the same draw
    len_keep = int(10 * (1 - 0.75))
    assert visible.shape == (2, len_keep, 3)
    for b in range(2):
        kept = noise[b].argsort()[:len_keep]  # the len_keep smallest noise values, in noise order
        torch.testing.assert_close(visible[b, :, 0], tokens[b, kept, 0], rtol=0, atol=0)
        assert mask[b].sum() == 10 - len_keep and (mask[b, kept] == 0).all()
    # the sequence in noise order (kept tokens first), gathered with ids_restore, is the original
    shuffled = tokens.gather(1, noise.argsort(1)[:, :, None].expand(-1, -1, 3))
    torch.testing.assert_close(shuffled.gather(1, ids_restore[:, :, None].expand(-1, -1, 3)), tokens, rtol=0, atol=0)


@pytest.mark.parametrize(("n", "ratio", "hidden"), [
    (16, 0.75, 12), (49, 0.75, 37), (49, 0.9, 45), (49, 0.25, 13), (10, 0.5, 5), (16, 0.0, 0),
])  # by hand: len_keep = floor(n (1 - ratio)), e.g. floor(4.9) = 4 kept of 49
def test_the_masked_fraction_is_exact(n, ratio, hidden):
    visible, mask, _ = random_masking(torch.zeros(3, n, 2), ratio, torch.Generator().manual_seed(1))
    assert (mask.sum(1) == hidden).all() and visible.shape[1] == n - hidden


def test_masks_are_seeded_per_model_and_differ_between_calls():
    images = torch.randn(4, 1, 28, 28)
    first = MaskedAutoencoder(VisionTransformer(embed_dim=32, depth=1), decoder_dim=16, seed=3)
    second = MaskedAutoencoder(VisionTransformer(embed_dim=32, depth=1), decoder_dim=16, seed=3)
    _, mask_a, _ = first.forward_encoder(images)
    _, mask_b, _ = second.forward_encoder(images)
    assert torch.equal(mask_a, mask_b)  # same seed, same masks
    _, mask_c, _ = first.forward_encoder(images)
    assert not torch.equal(mask_a, mask_c)  # the next call draws new ones
    assert not torch.equal(mask_a[0], mask_a[1])  # each image its own


def test_loss_counts_only_hidden_patches():
    target = torch.randn(2, 4, 6, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.float64)
    prediction = target + 5 * (1 - mask)[:, :, None]  # visible patches wrong, hidden ones right
    assert masked_patch_loss(prediction, target, mask).item() == 0.0
    prediction = target + 2 * mask[:, :, None]  # every hidden patch off by 2: squared error 4
    assert masked_patch_loss(prediction, target, mask).item() == pytest.approx(4.0)


def test_norm_pix_loss_normalises_each_target_patch():
    target = torch.randn(1, 3, 8, dtype=torch.float64) * 5 + 2
    mask = torch.ones(1, 3, dtype=torch.float64)
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert masked_patch_loss(normalised, target, mask, norm_pix_loss=True).item() == pytest.approx(0, abs=1e-12)


def test_encoder_with_ratio_zero_equals_the_vits_own_encoder():
    torch.manual_seed(0)
    vit = VisionTransformer(patch_size=4, embed_dim=32, depth=2, num_heads=4).double().eval()
    mae = MaskedAutoencoder(vit, decoder_dim=32).double().eval()
    images = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    latent, mask, ids_restore = mae.forward_encoder(images, mask_ratio=0.0)
    assert (mask == 0).all()
    expected = vit.forward_features(images)  # (B, 1 + N, D), original order
    torch.testing.assert_close(latent[:, 0], expected[:, 0])  # class token
    restored = latent[:, 1:].gather(1, ids_restore[:, :, None].expand(-1, -1, latent.shape[2]))
    torch.testing.assert_close(restored, expected[:, 1:])
    assert mae.encoder is vit  # the ViT itself, not a copy


def test_decoder_puts_visible_tokens_and_mask_tokens_back_in_place():
    # A decoder reduced to its bookkeeping: identity maps, no blocks, zero position embeddings.
    mae = MaskedAutoencoder(VisionTransformer(patch_size=7, embed_dim=49, depth=1, num_heads=7),
                            decoder_dim=49, decoder_heads=7).double()
    with torch.no_grad():
        mae.decoder_embed.weight.copy_(torch.eye(49))
        mae.decoder_embed.bias.zero_()
        mae.decoder_pos_embed.zero_()
        mae.mask_token.fill_(-1.0)
    mae.decoder_blocks = torch.nn.ModuleList()
    mae.decoder_norm = mae.decoder_pred = torch.nn.Identity()
    tokens = torch.rand(3, 16, 49, dtype=torch.float64)  # 16 patches, values in [0, 1)
    visible, mask, ids_restore = random_masking(tokens, 0.75, torch.Generator().manual_seed(0))
    latent = torch.cat([torch.zeros(3, 1, 49, dtype=torch.float64), visible], 1)  # class token first
    out = mae.forward_decoder(latent, ids_restore)  # (3, 16, 49)
    hidden = mask[..., None] == 1
    torch.testing.assert_close(out, torch.where(hidden, torch.full_like(tokens, -1.0), tokens), rtol=0, atol=0)


def test_forward_shapes_and_masked_loss():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VisionTransformer(patch_size=7, embed_dim=32, depth=1, num_heads=4), decoder_dim=16)
    images = torch.randn(4, 1, 28, 28)
    loss, prediction, mask = mae(images)
    assert prediction.shape == (4, 16, 49) and mask.shape == (4, 16)
    assert (mask.sum(1) == 12).all()  # 75 % of 16
    torch.testing.assert_close(loss, masked_patch_loss(prediction, patchify(images, 7), mask))
    loss.backward()
    assert mae.encoder.head.weight.grad is None  # the classifier takes no part


def test_pretraining_lowers_the_loss_and_restores_the_head():
    torch.manual_seed(0)
    vit = VisionTransformer(patch_size=7, embed_dim=32, depth=1, num_heads=4)
    mae = MaskedAutoencoder(vit, decoder_dim=32)
    images = torch.rand(256, 1, 28, 28).round()  # binary noise images
    loader = DeviceLoader(images, torch.zeros(256, dtype=torch.long), 64, shuffle=True, drop_last=True, device="cpu")
    head = [p.detach().clone() for p in vit.head.parameters()]
    history = pretrain_mae(mae, loader, epochs=6, device="cpu", lr=3e-3, progress=False)
    assert history.train_loss[-1] < 0.9 * history.train_loss[0]
    assert all(p.requires_grad for p in vit.head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(head, vit.head.parameters()))  # the head is not trained


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: patchify(torch.zeros(1, 1, 28, 28), 5), ValueError, "divisible by patch_size=5"),
    (lambda: patchify(torch.zeros(1, 28, 28), 7), ValueError, r"got \(1, 28, 28\)"),
    (lambda: patchify(torch.zeros(1, 1, 28, 21), 7), ValueError, "expected square images"),
    (lambda: random_masking(torch.zeros(1, 4, 2), -0.1), ValueError, r"must lie in \[0, 1\), got -0.1"),
    (lambda: masked_patch_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(2, 1)), ValueError, "mask \\(B, N\\)"),
    (lambda: pretrain_mae(MaskedAutoencoder(VisionTransformer()), [], epochs=1, device="cpu", weight_decay=-1), ValueError,
     "weight_decay >= 0"),
    (lambda: unpatchify(torch.zeros(1, 5, 49), 7), ValueError, "must be a square, got 5"),
    (lambda: unpatchify(torch.zeros(1, 4, 48), 7), ValueError, r"expected patches \(B, N, 49\)"),
    (lambda: random_masking(torch.zeros(1, 4), 0.5), ValueError, r"expected tokens \(B, N, D\)"),
    (lambda: random_masking(torch.zeros(1, 4, 2), 1.0), ValueError, r"must lie in \[0, 1\), got 1.0"),
    (lambda: random_masking(torch.zeros(1, 4, 2), 0.9), ValueError, "keeps no token of 4"),
    (lambda: masked_patch_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2)), ValueError, "hides no patch"),
    (lambda: masked_patch_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.ones(1, 2)), ValueError, "expected prediction"),
    (lambda: MaskedAutoencoder(torch.nn.Linear(2, 2)), TypeError, "must be a VisionTransformer, got Linear"),
    (lambda: MaskedAutoencoder(VisionTransformer(), mask_ratio=-0.1), ValueError, "mask_ratio must lie"),
    (lambda: MaskedAutoencoder(VisionTransformer(), decoder_depth=0), ValueError, "decoder_depth must be >= 1"),
    (lambda: MaskedAutoencoder(VisionTransformer(), decoder_dim=30), ValueError, "divisible by decoder_heads"),
    (lambda: pretrain_mae(MaskedAutoencoder(VisionTransformer()), [], epochs=0, device="cpu"), ValueError, "epochs must be >= 1"),
    (lambda: pretrain_mae(MaskedAutoencoder(VisionTransformer()), [], epochs=1, device="cpu", lr=0), ValueError, "lr must be > 0"),
    (lambda: pretrain_mae(MaskedAutoencoder(VisionTransformer()), iter([]), epochs=1, device="cpu"), TypeError, "with a length"),
])  # fmt: skip
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
