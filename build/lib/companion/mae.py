"""Masked autoencoders (MAE): pretraining a Vision Transformer by painting in what it was not shown.

He et al. (2022): cut every image into patches, hide a random 75 % of them, let the encoder (the
Vision Transformer being pretrained) see only the visible patches, and train a light decoder to
reconstruct the hidden patches' pixels from the encoder's output and a learned *mask token* per
hidden patch. The loss is the mean squared error on the hidden patches only, optionally against
per-patch normalised pixels (``norm_pix_loss``). The decoder is discarded afterwards; the encoder
is fine-tuned or probed.

The pieces follow the paper's reference code (``models_mae.py``): :func:`patchify` /
:func:`unpatchify`, :func:`random_masking` (per-sample uniform noise, ``argsort``, keep the
``len_keep = int(N · (1 − mask_ratio))`` patches with the smallest noise, and ``ids_restore`` to
put the sequence back in order), :func:`masked_patch_loss` and :class:`MaskedAutoencoder`, whose
encoder *is* a :class:`~companion.attention.VisionTransformer` (its patch embedding, position
embeddings, class token, blocks and final norm, not a copy). :func:`pretrain_mae` trains it with
:func:`companion.train.fit`, as SimCLR is trained in :mod:`companion.simclr`.

Where this differs from the reference code, on purpose: the position embeddings (the ViT's and the
decoder's) are learned, not fixed 2-D sine-cosine tables; the decoder's blocks are the ViT's
:class:`~companion.attention.TransformerBlock` (MLP ratio 2 by default, the paper's is 4); and
:func:`pretrain_mae` applies weight decay to every parameter, where the paper exempts biases,
norms and the tokens.

Explained in the chapter "Masked autoencoders".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .attention import TransformerBlock, VisionTransformer
from .history import History
from .train import fit

__all__ = ["MaskedAutoencoder", "masked_patch_loss", "patchify", "pretrain_mae", "random_masking", "unpatchify"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping P × P patches, each flattened.

    Args:
        images: (B, C, H, W), H = W divisible by ``patch_size``.
        patch_size: P >= 1.

    Returns:
        (B, N, P·P·C) with N = (H/P)², patches in row-major order (the order of
        :class:`~companion.attention.PatchEmbedding`'s tokens), pixels within a patch row by
        row with the channels last, as MAE's ``patchify``.

    Raises:
        ValueError: not 4-D, not square, or a side not divisible by ``patch_size``.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3] or patch_size < 1 or images.shape[2] % patch_size:
        raise ValueError(f"expected square images (B, C, H, H) with H divisible by patch_size={patch_size}, "
                         f"got {tuple(images.shape)}")  # fmt: skip
    B, C, H, _ = images.shape
    h = H // patch_size
    x = images.reshape(B, C, h, patch_size, h, patch_size)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * h, patch_size * patch_size * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 1) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, P·P·C) → (B, C, H, W) with H = W = P·√N.

    Raises:
        ValueError: not 3-D, N not a square, or a last dimension other than P·P·C.
    """
    if patches.ndim != 3 or patches.shape[2] != patch_size * patch_size * channels:
        raise ValueError(f"expected patches (B, N, {patch_size * patch_size * channels}), got {tuple(patches.shape)}")
    B, N, _ = patches.shape
    h = round(N**0.5)
    if h * h != N:
        raise ValueError(f"the number of patches must be a square, got {N}")
    x = patches.reshape(B, h, h, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * patch_size, h * patch_size)


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of each sequence's tokens, as MAE does (He et al., 2022).

    Every sample draws uniform noise per token; the ``len_keep = int(N · (1 − mask_ratio))``
    tokens with the smallest noise are kept, in the order of their noise.

    Args:
        tokens: (B, N, D).
        mask_ratio: fraction of tokens hidden, in [0, 1), with at least one token kept.
        generator: for the noise (on the tokens' device); ``None``: the global one.

    Returns:
        ``(visible, mask, ids_restore)``: the kept tokens (B, len_keep, D); the mask (B, N),
        float, 0 for kept and 1 for hidden tokens, in the original order; and int64 (B, N)
        indices that put a shuffled sequence (kept tokens first) back in the original order:
        ``shuffled.gather(1, ids_restore)``.

    Raises:
        ValueError: not 3-D, a ratio outside [0, 1), or one that keeps no token.
    """
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens (B, N, D), got {tuple(tokens.shape)}")
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    B, N, D = tokens.shape
    len_keep = int(N * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no token of {N}")
    noise = torch.rand(B, N, device=tokens.device, generator=generator)  # (B, N) in [0, 1)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    visible = tokens.gather(1, ids_keep[:, :, None].expand(-1, -1, D))
    mask = torch.ones(B, N, device=tokens.device, dtype=tokens.dtype)
    mask[:, :len_keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore


def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = False
) -> torch.Tensor:
    """MAE's loss: the mean squared error per patch, averaged over the hidden patches only.

    Args:
        prediction: (B, N, P·P·C) predicted pixels.
        target: (B, N, P·P·C) the true patches (:func:`patchify` of the images).
        mask: (B, N), 1 for hidden patches, 0 for visible ones (:func:`random_masking`).
        norm_pix_loss: compare with each target patch normalised by its own mean and
            (unbiased) standard deviation, ``(t − mean) / √(var + 1e-6)``, as the paper's best
            setting does.

    Returns:
        The 0-d loss ``Σ_n mask_n · mean_j (prediction − target)²_nj / Σ_n mask_n``.

    Raises:
        ValueError: shapes that do not match, or a mask with no hidden patch.
    """
    if prediction.shape != target.shape or prediction.ndim != 3 or mask.shape != prediction.shape[:2]:
        raise ValueError(f"expected prediction and target (B, N, L) and mask (B, N), "
                         f"got {tuple(prediction.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")  # fmt: skip
    if norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    hidden = mask.sum()
    if hidden == 0:
        raise ValueError("the mask hides no patch: the loss is defined on hidden patches only")
    per_patch = ((prediction - target) ** 2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / hidden


class MaskedAutoencoder(nn.Module):
    """A Vision Transformer as MAE's encoder, and a light transformer decoder (He et al., 2022).

    Encoder: the ViT's patch embedding and position embeddings on all patches, then
    :func:`random_masking`; the class token (plus its position embedding) is prepended to the
    visible tokens, which pass the ViT's blocks and final norm. Decoder: a linear map to
    ``decoder_dim``, one learned mask token per hidden patch, the sequence unshuffled with
    ``ids_restore``, its own position embeddings, ``decoder_depth`` blocks, a norm, and a
    linear map to each patch's P·P·C pixels. The class token is dropped before the prediction.

    Args:
        encoder: the :class:`~companion.attention.VisionTransformer` to pretrain (used, not
            copied: after pretraining it holds the pretrained weights; its head is unused).
        decoder_dim: width of the decoder, divisible by ``decoder_heads``.
        decoder_depth: decoder blocks, >= 1.
        decoder_heads: attention heads of the decoder.
        mask_ratio: default fraction of patches hidden, in [0, 1).
        norm_pix_loss: see :func:`masked_patch_loss`.
        seed: seeds the masking: a generator created on the images' device at the first call,
            and created again, from ``seed``, whenever the images arrive on another device. It
            is not part of ``state_dict``.

    Shape:
        - ``forward``: images (B, C, H, W) → ``(loss, prediction (B, N, P·P·C), mask (B, N))``.
        - ``forward_encoder``: → ``(latent (B, 1 + len_keep, D), mask, ids_restore)``.

    Raises:
        TypeError: ``encoder`` is not a VisionTransformer.
        ValueError: ``mask_ratio`` outside [0, 1), ``decoder_depth < 1``, or
            ``decoder_dim`` not divisible by ``decoder_heads``.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_dim: int = 64,
        decoder_depth: int = 1,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(f"encoder must be a VisionTransformer, got {type(encoder).__name__}")
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth must be >= 1, got {decoder_depth}")
        if decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim ({decoder_dim}) must be divisible by decoder_heads ({decoder_heads})")
        self.encoder = encoder
        embed = encoder.patch_embed
        self.patch_size, self.channels, num_patches = embed.patch_size, embed.in_channels, embed.num_patches
        embed_dim = encoder.cls_token.shape[-1]
        self.mask_ratio, self.norm_pix_loss, self.seed = mask_ratio, norm_pix_loss, seed
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, decoder_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(TransformerBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.channels)
        nn.init.normal_(self.mask_token, std=0.02)
        self._generator: torch.Generator | None = None

    def _masking_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def forward_encoder(
        self, images: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: ``(latent (B, 1 + len_keep, D), mask (B, N), ids_restore (B, N))``."""
        vit = self.encoder
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        tokens = vit.patch_embed(images) + vit.pos_embed[:, 1:]  # (B, N, D)
        visible, mask, ids_restore = random_masking(tokens, ratio, self._masking_generator(images.device))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(images), -1, -1)  # (B, 1, D)
        x = torch.cat([cls, visible], dim=1)  # (B, 1 + len_keep, D)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels: (B, 1 + len_keep, D) → (B, N, P·P·C)."""
        x = self.decoder_embed(latent)  # (B, 1 + len_keep, Dd)
        B, N = ids_restore.shape
        hidden = self.mask_token.expand(B, N + 1 - x.shape[1], -1)  # (B, N - len_keep, Dd)
        patches = torch.cat([x[:, 1:], hidden], dim=1)  # shuffled order: kept tokens first
        patches = patches.gather(1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, N + 1, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token

    def forward(
        self, images: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio)
        prediction = self.forward_decoder(latent, ids_restore)
        target = patchify(images, self.patch_size)
        return masked_patch_loss(prediction, target, mask, self.norm_pix_loss), prediction, mask

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The loss of one step for :func:`~companion.train.train_epoch` (labels ``y`` unused)."""
        return model(x)[0], None


def pretrain_mae(
    mae: MaskedAutoencoder,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device | str,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    progress: bool = True,
) -> History:
    """Train ``mae`` (encoder and decoder) without labels; return the History.

    AdamW with the paper's β = (0.9, 0.95) and weight decay 0.05, and a one-cycle schedule of
    the learning rate stepped every batch (β is not cycled), through :func:`companion.train.fit` (``batch_loss=mae.batch_loss``).
    The History's ``train_loss`` is the masked-patch loss per epoch; accuracies are NaN.

    Args:
        mae: on ``device``.
        loader: a re-iterable loader with a length of ``(x, y)`` batches (labels ignored).
        epochs: passes over ``loader``, >= 1.
        device: where the batches go.
        lr: peak learning rate, > 0.
        weight_decay: AdamW's decoupled weight decay, >= 0.
        progress: show a tqdm bar.

    Raises:
        ValueError: ``epochs < 1``, ``lr <= 0`` or ``weight_decay < 0``.
        TypeError: ``loader`` has no length.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0 or weight_decay < 0:
        raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
    if not hasattr(loader, "__len__"):
        raise TypeError(f"loader must be re-iterable with a length, got {type(loader).__name__}")
    # The encoder's classification head takes no part in the loss: frozen for the run.
    head = [p for p in mae.encoder.head.parameters() if p.requires_grad]
    for parameter in head:
        parameter.requires_grad_(False)
    trainable = [p for p in mae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader),
                                                    cycle_momentum=False)  # keep the paper's betas
    try:
        return fit(mae, loader, optimizer=optimizer, epochs=epochs, device=device, batch_loss=mae.batch_loss,
                   scheduler=scheduler, progress=progress)  # fmt: skip
    finally:
        for parameter in head:
            parameter.requires_grad_(True)
