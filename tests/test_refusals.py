"""Refuse, never approximate: PyTorch's own sample inputs as the oracle.

PyTorch's test suite lists, for every built-in operator and module, sample inputs that exercise
its options (``op_db``, ``module_db`` in ``torch.testing._internal``). Each sample is run through
the built-in and through the package's from-scratch twin (for modules: ``from_torch`` of the
built module, then its forward, in training and in evaluation mode). The twin must either compute
the same values (float64) or raise a ``ValueError`` / ``TypeError`` — never return something else
or raise another exception. For the recurrent modules, whose options are few, each sample's
outcome is the documented one: computed if and only if the module is one the twin implements.
The other tests check that a twin computed some samples and refused some.
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


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel lengths")  # PyTorch's own note
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_compute_pytorchs_samples_or_refuse_them(name):
    (info,) = [op for op in op_db if op.name == name and op.variant_test_name == ""]
    ours = FUNCTIONS[name]
    outcomes = []
    for sample in info.sample_inputs("cpu", torch.float64, requires_grad=False):
        args, kwargs = (sample.input, *sample.args), sample.kwargs
        outcomes.append(_check(lambda: info.op(*args, **kwargs), lambda: ours(*args, **kwargs)))
    assert any(outcomes) and not all(outcomes), f"{name}: {sum(outcomes)} of {len(outcomes)} computed"


MODULES = {
    "MultiheadAttention": attention.MultiHeadAttention.from_torch,
    "TransformerEncoderLayer": attention.TransformerBlock.from_torch,
    "RNN": rnn.RNN.from_torch,
    "LSTM": rnn.LSTM.from_torch,
    "GRU": rnn.GRU.from_torch,
}


def _recurrent_supported(module: torch.nn.Module) -> bool:
    """What the recurrent twins implement: unidirectional, tanh, no projections, no dropout (any input layout)."""
    expected = {"RNN": "RNN_TANH", "LSTM": "LSTM", "GRU": "GRU"}[type(module).__name__]
    return module.mode == expected and not module.bidirectional and not getattr(module, "proj_size", 0) \
        and not module.dropout  # fmt: skip


#: For the modules whose options are few, which samples must compute; every other one must be refused.
SUPPORTED = {"RNN": _recurrent_supported, "LSTM": _recurrent_supported, "GRU": _recurrent_supported}


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
            args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
            try:
                ours = MODULES[name](module).train(training)
            except REFUSED:
                computed = False
            else:
                with torch.no_grad():
                    computed = _check(lambda: module(*args, **kwargs), lambda: ours(*args, **kwargs))
            outcomes.append(computed)
            if name in SUPPORTED and computed != SUPPORTED[name](module):
                wrong.append((sample.desc, "computed" if computed else "refused"))
    assert not wrong, f"{name}: samples whose outcome is not the documented one: {wrong}"
    if name in SUPPORTED:
        assert any(outcomes) and not all(outcomes), f"{name}: {sum(outcomes)} of {len(outcomes)} computed"
    else:
        # PyTorch's samples for these are mostly options the classes refuse; what they compute is
        # checked against the modules in test_attention.py.
        assert not all(outcomes), f"{name}: every sample computed, none exercised a refusal"
