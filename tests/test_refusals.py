"""Refuse, never approximate: PyTorch's own sample inputs as the oracle.

PyTorch's test suite lists, for every built-in operator and module, sample inputs that exercise
its options (``op_db``, ``module_db`` in ``torch.testing._internal``). Each sample is run through
the built-in and through the package's from-scratch twin (for modules: ``from_torch`` of the
built module, then its forward, in training and in evaluation mode). The twin must either compute
the same values (float64) or raise a ``ValueError`` / ``TypeError`` — never return something else
or raise another exception. Sample by sample, the outcome is the documented one: a predicate per
twin (``SUPPORTED_SAMPLES``, ``SUPPORTED``) says from the sample's options and shapes whether the
twin implements it; such a sample must compute PyTorch's values and any other must be refused.
The attention modules' unbatched samples are also run as a batch of one, so that their options
reach what the twins compute.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("expecttest")  # torch.testing._internal needs it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

import companion.attention as attention  # noqa: E402
import companion.cnn as cnn  # noqa: E402
import companion.rnn as rnn  # noqa: E402

REFUSED = (ValueError, TypeError)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _check(reference, ours) -> bool:
    """Run both; True if ours computed (and equals the reference), False if it refused."""
    expected = reference()
    try:
        got = ours()
    except REFUSED:
        return False
    expected, got = _first(expected), _first(got)
    if isinstance(expected, tuple):
        expected = expected[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    return True


FUNCTIONS = {
    "nn.functional.conv2d": cnn.conv2d,
    "nn.functional.max_pool2d": cnn.max_pool2d,
    "nn.functional.avg_pool2d": cnn.avg_pool2d,
    "nn.functional.scaled_dot_product_attention": attention.scaled_dot_product_attention,
}


def _options(args: tuple, kwargs: dict, names: list[str]) -> dict:
    """A sample's options by name, whether they came positionally (after the input) or by keyword."""
    return {**dict(zip(names, args[1:])), **kwargs}


def _all_ones(value) -> bool:
    return all(v == 1 for v in ((value,) if isinstance(value, int) else value))


def _conv2d_supported(args: tuple, kwargs: dict) -> bool:
    """Batched (B, C, H, W) input, numeric padding (not "same" / "valid")."""
    options = _options(args, kwargs, ["weight", "bias", "stride", "padding", "dilation", "groups"])
    return args[0].dim() == 4 and not isinstance(options.get("padding", 0), str)


def _max_pool2d_supported(args: tuple, kwargs: dict) -> bool:
    """Batched (B, C, H, W) input; PyTorch's defaults for ceil_mode (False) and dilation (1)."""
    options = _options(args, kwargs, ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"])
    return args[0].dim() == 4 and not options.get("ceil_mode", False) and _all_ones(options.get("dilation", 1))


def _avg_pool2d_supported(args: tuple, kwargs: dict) -> bool:
    """Batched (B, C, H, W) input; PyTorch's defaults for ceil_mode (False), count_include_pad (True) and
    divisor_override (None)."""
    options = _options(args, kwargs, ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                      "divisor_override"])  # fmt: skip
    return (args[0].dim() == 4 and not options.get("ceil_mode", False) and options.get("count_include_pad", True)
            and options.get("divisor_override") is None)  # fmt: skip


def _sdpa_supported(args: tuple, kwargs: dict) -> bool:
    """Query, key and value of one rank; no dropout, no grouped-query attention; causal only for M == N without a mask."""
    query, key, value = args[:3]
    if not query.dim() == key.dim() == value.dim():
        return False
    if kwargs.get("dropout_p", 0.0) or kwargs.get("enable_gqa", False):
        return False
    causal = kwargs.get("is_causal", False)
    return not causal or (query.shape[-2] == key.shape[-2] and kwargs.get("attn_mask") is None)


#: What each twin implements, as a predicate of a sample's arguments: a sample for which it holds must
#: compute PyTorch's values; any other must be refused with a ValueError or a TypeError.
SUPPORTED_SAMPLES = {
    "nn.functional.conv2d": _conv2d_supported,
    "nn.functional.max_pool2d": _max_pool2d_supported,
    "nn.functional.avg_pool2d": _avg_pool2d_supported,
    "nn.functional.scaled_dot_product_attention": _sdpa_supported,
}


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")  # PyTorch's own note
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_compute_pytorchs_samples_or_refuse_them(name):
    (info,) = [op for op in op_db if op.name == name and op.variant_test_name == ""]
    ours, supported = FUNCTIONS[name], SUPPORTED_SAMPLES[name]
    outcomes, wrong = [], []
    for sample in info.sample_inputs("cpu", torch.float64, requires_grad=False):
        args, kwargs = (sample.input, *sample.args), sample.kwargs
        computed = _check(lambda: info.op(*args, **kwargs), lambda: ours(*args, **kwargs))
        outcomes.append(computed)
        if computed != supported(args, kwargs):
            shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args]
            wrong.append((shapes, kwargs, "computed" if computed else "refused"))
    assert not wrong, f"{name}: samples whose outcome is not the documented one: {wrong}"
    assert any(outcomes) and not all(outcomes), f"{name}: {sum(outcomes)} of {len(outcomes)} computed"


MODULES = {
    "MultiheadAttention": attention.MultiHeadAttention.from_torch,
    "TransformerEncoderLayer": attention.TransformerBlock.from_torch,
    "RNN": rnn.RNN.from_torch,
    "LSTM": rnn.LSTM.from_torch,
    "GRU": rnn.GRU.from_torch,
}


def _recurrent_supported(module: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    """What the recurrent twins implement: unidirectional, tanh, no projections, no dropout (any input layout)."""
    expected = {"RNN": "RNN_TANH", "LSTM": "LSTM", "GRU": "GRU"}[type(module).__name__]
    return module.mode == expected and not module.bidirectional and not getattr(module, "proj_size", 0) \
        and not module.dropout  # fmt: skip


def _attention_supported(module: torch.nn.MultiheadAttention, args: tuple, kwargs: dict) -> bool:
    """No attention dropout, kdim = vdim = embed_dim, no add_bias_kv / add_zero_attn; batched input."""
    built = not module.dropout and module.kdim == module.vdim == module.embed_dim and module.bias_k is None \
        and not module.add_zero_attn  # fmt: skip
    return built and args[0].dim() == 3 and not kwargs.get("is_causal", False)


def _encoder_layer_supported(module: torch.nn.TransformerEncoderLayer, args: tuple, kwargs: dict) -> bool:
    """Pre-norm, exact GELU, no dropout, batch_first, with biases; batched input and no masks (forward(x))."""
    gelu = module.activation is torch.nn.functional.gelu
    no_dropout = not any(getattr(module, name).p for name in ("dropout", "dropout1", "dropout2"))
    built = module.norm_first and gelu and no_dropout and module.self_attn.batch_first and module.linear1.bias is not None
    return built and args[0].dim() == 3 and not kwargs


#: For every module, which samples must compute; every other one must be refused.
SUPPORTED = {"RNN": _recurrent_supported, "LSTM": _recurrent_supported, "GRU": _recurrent_supported,
             "MultiheadAttention": _attention_supported, "TransformerEncoderLayer": _encoder_layer_supported}  # fmt: skip


def _batched(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """An unbatched attention sample made batched (a batch of one), or None when it is batched already.

    PyTorch's samples for these two modules are mostly unbatched, which the twins refuse; their batched
    copies exercise the options (masks, bias, layouts) on what the twins do compute.
    """
    if args[0].dim() != 2:
        return None
    batch_first = getattr(module, "batch_first", True) if not hasattr(module, "self_attn") else module.self_attn.batch_first
    axis = 0 if batch_first else 1
    args = tuple(a.unsqueeze(axis) if isinstance(a, torch.Tensor) else a for a in args)
    masks = ("key_padding_mask", "src_key_padding_mask")  # (N,) -> (1, N); attn_mask (nh, M, N) already fits B=1
    kwargs = {k: v.unsqueeze(0) if k in masks and isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return args, kwargs


@pytest.mark.parametrize("name", sorted(MODULES))
def test_from_torch_copies_compute_pytorchs_samples_or_refuse_them(name):
    (info,) = [m for m in module_db if m.module_cls.__name__ == name]
    outcomes, wrong = [], []
    for training in (False, True):
        for sample in info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                              training=training):  # fmt: skip
            torch.manual_seed(0)
            module = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs)
            module = module.double().train(training)
            calls = [(sample.forward_input.args, sample.forward_input.kwargs)]
            if name in ("MultiheadAttention", "TransformerEncoderLayer"):
                calls += [c for c in [_batched(module, *calls[0])] if c is not None]
            for args, kwargs in calls:
                try:
                    ours = MODULES[name](module).train(training)
                except REFUSED:
                    computed = False
                else:
                    with torch.no_grad():
                        computed = _check(lambda: module(*args, **kwargs), lambda: ours(*args, **kwargs))
                outcomes.append(computed)
                if computed != SUPPORTED[name](module, args, kwargs):
                    wrong.append((sample.desc, [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)],
                                  sorted(kwargs), "computed" if computed else "refused"))  # fmt: skip
    assert not wrong, f"{name}: samples whose outcome is not the documented one: {wrong}"
    assert not all(outcomes), f"{name}: every sample computed, none exercised a refusal"
    if name != "TransformerEncoderLayer":  # PyTorch's samples never build a pre-norm GELU layer
        assert any(outcomes), f"{name}: no sample computed"
