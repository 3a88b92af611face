r"""Attention from its equations: additive and scaled dot-product attention, multi-head attention,
a pre-norm transformer block, patch embedding and a small Vision Transformer.

Shape letters: B batch, M queries, N keys (tokens), D embedding (``embed_dim``), nh heads
(``num_heads``), hd head dimension (``head_dim`` = D / nh), P patch size, K classes.

Mask conventions differ inside PyTorch itself, and this module follows each twin:
:func:`scaled_dot_product_attention` takes ``attn_mask`` like ``F.scaled_dot_product_attention``
(boolean True = *may attend*; a float mask is added to the scores), while
:class:`MultiHeadAttention` takes ``key_padding_mask`` and ``attn_mask`` like
``nn.MultiheadAttention`` (boolean True = *masked out*).

Chapter "Attention and self-attention" derives the equations and proves these equal to PyTorch's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .utils import eval_mode

__all__ = [
    "MultiHeadAttention",
    "PatchEmbedding",
    "TransformerBlock",
    "VisionTransformer",
    "additive_attention",
    "attention_rollout",
    "scaled_dot_product_attention",
]


def _check_mask_dtype(mask: torch.Tensor, name: str, float_ok: bool = True) -> None:
    """Masks are boolean, or float scores to add; an integer mask is ambiguous and refused."""
    if mask.dtype != torch.bool and not (float_ok and mask.is_floating_point()):
        kinds = "boolean or floating point" if float_ok else "boolean"
        raise TypeError(f"{name} must be {kinds}, got {mask.dtype}; convert an integer mask with .bool()")


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis where ``allowed`` (and the score is not -inf).

    A row with nothing allowed would be 0/0; it is defined here as attending to nothing:
    all-zero weights, with zero gradient (no NaN forward or backward).
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., M, 1)
    weights = scores.masked_fill(empty, 0.0).softmax(dim=-1)
    return weights.masked_fill(empty, 0.0)


def additive_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    weight_query: torch.Tensor,
    weight_key: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Additive attention (Bahdanau, Cho & Bengio, 2015).

    .. math::
        e_{n} = v^\top \tanh(W_q q + W_k k_n), \qquad
        \alpha_{n} = \frac{\exp e_{n}}{\sum_{n'} \exp e_{n'}}, \qquad
        c = \sum_{n} \alpha_{n} v_{n}

    Args:
        query: (B, Dq) or (B, M, Dq).
        keys: (B, N, Dk).
        values: (B, N, Dv).
        weight_query: W_q, (A, Dq).
        weight_key: W_k, (A, Dk).
        v: (A,).
        mask: optional boolean (B, N) or (B, M, N), True = may attend.

    Returns:
        ``(context, weights)``: (B, Dv) and (B, N), or (B, M, Dv) and (B, M, N).
        A query with no allowed key gets zero weights and a zero context.

    Raises:
        ValueError: shapes that do not fit together.
        TypeError: a mask that is not boolean.
    """
    single = query.ndim == 2
    q = query.unsqueeze(1) if single else query  # (B, M, Dq)
    if q.ndim != 3 or keys.ndim != 3 or values.ndim != 3 or keys.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"expected query (B, Dq) or (B, M, Dq), keys (B, N, Dk) and values (B, N, Dv), "
            f"got {tuple(query.shape)}, {tuple(keys.shape)} and {tuple(values.shape)}"
        )
    if q.shape[0] != keys.shape[0]:
        raise ValueError(f"query and keys differ in batch size: {tuple(query.shape)} and {tuple(keys.shape)}")
    if (
        weight_query.ndim != 2
        or weight_key.ndim != 2
        or weight_query.shape[1] != q.shape[-1]
        or weight_key.shape[1] != keys.shape[-1]
        or weight_query.shape[0] != weight_key.shape[0]
        or tuple(v.shape) != (weight_key.shape[0],)
    ):
        raise ValueError(
            f"expected weight_query (A, {q.shape[-1]}), weight_key (A, {keys.shape[-1]}) and v (A,), got "
            f"{tuple(weight_query.shape)}, {tuple(weight_key.shape)} and {tuple(v.shape)}"
        )
    projected_q = q @ weight_query.T  # (B, M, A)
    projected_k = keys @ weight_key.T  # (B, N, A)
    # e = v^T tanh(W_q q + W_k k_n), for every query-key pair
    scores = torch.tanh(projected_q[:, :, None, :] + projected_k[:, None, :, :]) @ v  # (B, M, N)
    allowed = None
    if mask is not None:
        _check_mask_dtype(mask, "mask", float_ok=False)
        B, M, N = scores.shape
        if tuple(mask.shape) not in ((B, N), (B, M, N)):
            raise ValueError(f"expected mask of shape ({B}, {N}) or ({B}, {M}, {N}), got {tuple(mask.shape)}")
        allowed = mask.unsqueeze(1).expand_as(scores) if mask.ndim == 2 else mask
    weights = _masked_softmax(scores, allowed)  # alpha over the keys
    context = weights @ values  # c = sum_n alpha_n v_n: (B, M, Dv)
    return (context[:, 0], weights[:, 0]) if single else (context, weights)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    need_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Scaled dot-product attention (Vaswani et al., 2017), equal to ``F.scaled_dot_product_attention``.

    .. math:: \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Big(\frac{Q K^\top}{\sqrt{d_k}} + \text{mask}\Big) V

    Args:
        query: (..., M, d_k).
        key: (..., N, d_k).
        value: (..., N, d_v).
        attn_mask: broadcastable to (..., M, N): boolean (True = may attend) or float (added to the scores).
        dropout_p: only 0 is implemented (no attention dropout).
        is_causal: query m may attend only to keys n <= m (needs M == N); not combinable with ``attn_mask``.
        scale: multiplies the scores instead of 1/√d_k, as PyTorch's ``scale``.
        enable_gqa: only ``False`` is implemented (no grouped-query attention).
        need_weights: also return the attention weights (keyword only; PyTorch's function has no
            such argument and never returns them).

    Returns:
        The output (..., M, d_v), as PyTorch's function returns it; with ``need_weights=True``,
        ``(output, weights)`` with weights (..., M, N). A query with no allowed key gets zero
        weights and a zero output (PyTorch's function returns NaN there on some backends).

    Raises:
        ValueError: mismatched shapes, a mask that does not broadcast, or ``is_causal`` with ``attn_mask``
            or with M != N, ``dropout_p`` other than 0, or ``enable_gqa=True``.
        TypeError: an ``attn_mask`` that is neither boolean nor floating point (an integer mask
            would be added to the scores; PyTorch's convention for it is ambiguous).
    """
    if query.ndim < 2 or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(
            f"expected query (..., M, d_k), key (..., N, d_k) and value (..., N, d_v) of the same rank, "
            f"got {tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"query and key need the same d_k and key and value the same N, got {tuple(query.shape)}, "
            f"{tuple(key.shape)} and {tuple(value.shape)}"
        )
    if dropout_p != 0 or enable_gqa:
        raise ValueError(f"scaled_dot_product_attention implements neither attention dropout nor grouped-query "
                         f"attention, got dropout_p={dropout_p}, enable_gqa={enable_gqa}")  # fmt: skip
    M, N = query.shape[-2], key.shape[-2]
    factor = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = query @ key.transpose(-2, -1) * factor  # Q K^T / √d_k: (..., M, N)
    allowed = None
    if is_causal:
        if attn_mask is not None or M != N:
            raise ValueError(f"is_causal needs M == N and no attn_mask, got M={M}, N={N}, attn_mask given: {attn_mask is not None}")
        allowed = torch.ones(M, N, dtype=torch.bool, device=query.device).tril()  # key n <= query m
    elif attn_mask is not None:
        _check_mask_dtype(attn_mask, "attn_mask")
        try:
            torch.broadcast_shapes(attn_mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to {tuple(scores.shape)}") from None
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask
        else:
            scores = scores + attn_mask
    if attn_mask is None and not is_causal:  # no mask: every query has all N keys to attend to
        weights = scores.softmax(dim=-1)  # (..., M, N)
    else:
        weights = _masked_softmax(scores, allowed)  # (..., M, N)
    output = weights @ value  # (..., M, d_v)
    return (output, weights) if need_weights else output


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention (Vaswani et al., 2017), equal to ``nn.MultiheadAttention``.

    .. math::
        \operatorname{head}_h = \operatorname{Attention}(Q W_h^Q, K W_h^K, V W_h^V), \qquad
        \operatorname{MHA}(Q, K, V) = [\operatorname{head}_1; \dots; \operatorname{head}_{nh}]\, W^O

    The three input projections are stored stacked, as PyTorch's ``in_proj_weight`` (3D, D)
    and ``in_proj_bias`` (3D,), so weights copy across with :meth:`from_torch`.

    Args:
        embed_dim: D, the size of queries, keys, values and output.
        num_heads: nh; must divide ``embed_dim``.
        bias: add biases to the projections (keyword only: PyTorch's third positional argument is
            ``dropout``, which this class does not implement).
        batch_first: required, keyword only: inputs and output are (B, M, D) if ``True``, (M, B, D)
            if ``False``. ``nn.MultiheadAttention`` defaults to ``False``; no default here, so that a
            (B, M, D) input can never be read as (M, B, D) by a forgotten argument.

    Shape:
        - query (B, M, D), key and value (B, N, D) with ``batch_first`` (else sequence first).
        - key_padding_mask: optional (B, N) boolean, True = padding, ignored (PyTorch's convention).
        - attn_mask: optional (M, N) or (B·nh, M, N); boolean True = not allowed, or float added.
        - Output: ``(output, weights)``: (B, M, D) and, with ``need_weights``, (B, M, N) averaged over
          heads (or (B, nh, M, N) with ``average_attn_weights=False``), else ``None``.

    Raises:
        ValueError: ``embed_dim`` not divisible by ``num_heads``, inputs of the wrong shape or masks of
            the wrong shape.
        TypeError: a mask that is neither boolean nor floating point.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, bias: bool = True, batch_first: bool) -> None:
        super().__init__()
        if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first = batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)  # W^Q, W^K, W^V stacked
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)  # W^O

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of an ``nn.MultiheadAttention`` with copied weights.

        Raises:
            ValueError: the module uses an option this class does not implement: attention
                dropout (``dropout > 0``), ``kdim`` / ``vdim`` other than ``embed_dim``,
                ``add_bias_kv`` or ``add_zero_attn``.
        """
        unsupported = {
            "dropout": module.dropout != 0,
            "kdim": module.kdim != module.embed_dim,
            "vdim": module.vdim != module.embed_dim,
            "add_bias_kv": module.bias_k is not None,
            "add_zero_attn": module.add_zero_attn,
        }
        if any(unsupported.values()):
            names = ", ".join(f"{name}={getattr(module, name, True)!r}" for name, bad in unsupported.items() if bad)
            raise ValueError(f"MultiHeadAttention does not implement {names} of nn.MultiheadAttention; "
                             "it would compute something else")  # fmt: skip
        ours = cls(module.embed_dim, module.num_heads, bias=module.in_proj_bias is not None, batch_first=module.batch_first)
        ours = ours.to(device=module.in_proj_weight.device, dtype=module.in_proj_weight.dtype)
        with torch.no_grad():
            ours.in_proj.weight.copy_(module.in_proj_weight)
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if module.in_proj_bias is not None:
                ours.in_proj.bias.copy_(module.in_proj_bias)
                ours.out_proj.bias.copy_(module.out_proj.bias)
        return ours

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, T, D) -> (B, nh, T, hd)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self_attention = query is key and key is value
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.ndim != 3 or t.shape[-1] != self.embed_dim:
                layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
                raise ValueError(f"expected {name} of shape {layout} with D={self.embed_dim}, got {tuple(t.shape)}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (T, B, D) -> (B, T, D)
        B, M, D = query.shape
        N = key.shape[1]
        if key.shape[:2] != value.shape[:2] or key.shape[0] != B:
            raise ValueError(f"query, key and value disagree on B or N: {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if self_attention:  # one product with the stacked weight, as PyTorch does (and LoRA can wrap in_proj)
            q, k, v = (self._split_heads(t) for t in self.in_proj(query).chunk(3, dim=-1))  # (B, nh, M, hd) each
        else:
            if not isinstance(self.in_proj, nn.Linear):
                raise TypeError(f"cross-attention reads in_proj's weight directly; in_proj is {type(self.in_proj).__name__}")
            w_q, w_k, w_v = self.in_proj.weight.chunk(3)
            b_q, b_k, b_v = self.in_proj.bias.chunk(3) if self.in_proj.bias is not None else (None, None, None)
            q = self._split_heads(F.linear(query, w_q, b_q))  # Q W^Q: (B, nh, M, hd)
            k = self._split_heads(F.linear(key, w_k, b_k))  # K W^K: (B, nh, N, hd)
            v = self._split_heads(F.linear(value, w_v, b_v))  # V W^V: (B, nh, N, hd)
        scores_mask = self._combined_mask(key_padding_mask, attn_mask, B, M, N, query.dtype)
        heads, weights = scaled_dot_product_attention(q, k, v, attn_mask=scores_mask, need_weights=True)  # (B, nh, M, hd)
        out = self.out_proj(heads.transpose(1, 2).reshape(B, M, D))  # concat heads, then W^O: (B, M, D)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

    def _combined_mask(self, key_padding_mask, attn_mask, B, M, N, dtype) -> torch.Tensor | None:
        """Both masks in PyTorch's "True = masked out" convention, as one float mask (B, nh, M, N) of 0 / -inf."""
        if key_padding_mask is None and attn_mask is None:
            return None
        mask = torch.zeros(B, self.num_heads, M, N, dtype=dtype, device=self.out_proj.weight.device)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, N):
                raise ValueError(f"expected key_padding_mask of shape ({B}, {N}), got {tuple(key_padding_mask.shape)}")
            mask = mask + self._as_additive(key_padding_mask, dtype)[:, None, None, :]
        if attn_mask is not None:
            if tuple(attn_mask.shape) == (M, N):
                mask = mask + self._as_additive(attn_mask, dtype)
            elif tuple(attn_mask.shape) == (B * self.num_heads, M, N):
                mask = mask + self._as_additive(attn_mask, dtype).view(B, self.num_heads, M, N)
            else:
                raise ValueError(
                    f"expected attn_mask of shape ({M}, {N}) or ({B * self.num_heads}, {M}, {N}), got {tuple(attn_mask.shape)}"
                )
        return mask

    @staticmethod
    def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        _check_mask_dtype(mask, "mask")
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)


class TransformerBlock(nn.Module):
    r"""Pre-norm transformer encoder block (as in ViT, Dosovitskiy et al., 2021).

    .. math::
        x &\leftarrow x + \operatorname{MHA}(\operatorname{LN}(x)) \\
        x &\leftarrow x + \operatorname{MLP}(\operatorname{LN}(x)), \quad
        \operatorname{MLP}(u) = W_2\, \operatorname{GELU}(W_1 u)

    Args:
        embed_dim: D.
        num_heads: nh, divides D.
        mlp_ratio: hidden width of the MLP as a multiple of D.

    Shape:
        (B, N, D) → (B, N, D); with ``return_attention``, also the attention weights (B, nh, N, N).

    Raises:
        ValueError: as :class:`MultiHeadAttention`.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = round(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer) -> TransformerBlock:
        """A copy of ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0,
        batch_first=True)``, weights and layer-norm epsilons included.

        Raises:
            ValueError: the layer uses what this block does not implement: post-norm
                (``norm_first=False``), an activation other than exact GELU, dropout, or
                ``batch_first=False``, ``bias=False``; or its attention has an option
                :meth:`MultiHeadAttention.from_torch` refuses.
        """
        gelu = layer.activation is F.gelu or (isinstance(layer.activation, nn.GELU) and layer.activation.approximate == "none")
        dropouts = {name: getattr(layer, name).p for name in ("dropout", "dropout1", "dropout2")}
        unsupported = {
            "norm_first=False": not layer.norm_first,
            f"activation={layer.activation!r}": not gelu,
            f"dropout={max(dropouts.values())}": any(p > 0 for p in dropouts.values()),
            "batch_first=False": not layer.self_attn.batch_first,
            "bias=False": layer.linear1.bias is None,
        }
        if any(unsupported.values()):
            names = ", ".join(name for name, bad in unsupported.items() if bad)
            raise ValueError(f"TransformerBlock does not implement {names} of nn.TransformerEncoderLayer")
        embed_dim, hidden = layer.linear1.in_features, layer.linear1.out_features
        block = cls(embed_dim, layer.self_attn.num_heads, mlp_ratio=hidden / embed_dim)
        block.attn = MultiHeadAttention.from_torch(layer.self_attn)
        block.norm1.eps, block.norm2.eps = layer.norm1.eps, layer.norm2.eps
        block = block.to(device=layer.linear1.weight.device, dtype=layer.linear1.weight.dtype)
        pairs = [(block.norm1, layer.norm1), (block.norm2, layer.norm2), (block.mlp[0], layer.linear1), (block.mlp[2], layer.linear2)]
        with torch.no_grad():
            for ours, theirs in pairs:
                ours.weight.copy_(theirs.weight)
                ours.bias.copy_(theirs.bias)
        return block

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        h = self.norm1(x)
        attended, weights = self.attn(h, h, h, need_weights=return_attention, average_attn_weights=False)
        x = x + attended  # (B, N, D)
        x = x + self.mlp(self.norm2(x))  # (B, N, D)
        return (x, weights) if return_attention else x


class PatchEmbedding(nn.Module):
    """Cut an image into P × P patches and map each to a D-dimensional token (Dosovitskiy et al., 2021).

    Flattening every patch (C·P·P values) and applying one shared linear map is exactly a
    convolution with kernel size and stride P; the convolution is how it is computed.

    Args:
        image_size: H = W of the input, divisible by ``patch_size``.
        patch_size: P.
        in_channels: C.
        embed_dim: D.

    Shape:
        (B, C, H, W) → (B, N, D) with N = (H / P)², patches in row-major order.

    Raises:
        ValueError: ``image_size`` not divisible by ``patch_size``, or an input of another shape.
    """

    def __init__(self, image_size: int = 28, patch_size: int = 7, in_channels: int = 1, embed_dim: int = 64) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"PatchEmbedding expects images (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        x = self.proj(x)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(nn.Module):
    r"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28 × 28 images.

    Patch tokens plus a learned class token, learned position embeddings, ``depth`` pre-norm
    blocks, a final LayerNorm; the class token's final state feeds a linear head.

    Args:
        image_size, patch_size, in_channels: see :class:`PatchEmbedding`.
        num_classes: K.
        embed_dim: D.
        depth: number of :class:`TransformerBlock` s.
        num_heads: nh, divides D.
        mlp_ratio: MLP width as a multiple of D.

    Shape:
        - Input: (B, C, H, W).
        - ``forward_features``: (B, N + 1, D), class token first.
        - ``forward_head`` / ``forward``: (B, K) logits.
        - :meth:`attention_maps`: ``depth`` tensors (B, nh, N + 1, N + 1).

    Raises:
        ValueError: see :class:`PatchEmbedding` and :class:`MultiHeadAttention`.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        embed_dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.pos_embed  # (B, N + 1, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)  # (B, N + 1, D)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features[:, 0])  # class token: (B, D) -> (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's attention weights per head, (B, nh, N + 1, N + 1) each, in eval mode."""
        maps = []
        with eval_mode(self):  # the previous mode comes back, also on an error
            tokens = self._tokens(x)
            for block in self.blocks:
                tokens, weights = block(tokens, return_attention=True)
                maps.append(weights)
        return maps


def attention_rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema, 2020): how much each token's input reaches each output.

    Each layer's head-averaged attention A is mixed with the residual path and renormalised,
    :math:`\hat A = \tfrac12 (A + I)`, and the layers are multiplied:
    :math:`R = \hat A_L \cdots \hat A_1`.

    Args:
        maps: per-layer attention weights, (B, nh, T, T) or (B, T, T), first layer first.

    Returns:
        (B, T, T); row t says how the input tokens combine into output token t (rows sum to 1).

    Raises:
        ValueError: no maps, or maps of different shapes.
    """
    if not maps:
        raise ValueError("attention_rollout() needs at least one attention map")
    averaged = [m.mean(dim=1) if m.ndim == 4 else m for m in maps]  # (B, T, T)
    if any(a.shape != averaged[0].shape or a.shape[-1] != a.shape[-2] for a in averaged):
        raise ValueError(f"expected square maps of one shape, got {[tuple(m.shape) for m in maps]}")
    T = averaged[0].shape[-1]
    eye = torch.eye(T, dtype=averaged[0].dtype, device=averaged[0].device)
    rollout = eye.expand_as(averaged[0])
    for a in averaged:
        mixed = (a + eye) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout
