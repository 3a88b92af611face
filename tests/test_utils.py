"""companion.utils: eval_mode, the one atomic write (permissions, failures, modes) and the image check."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from companion.utils import atomic_write, check_float_images, eval_mode


def _usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_atomic_write_replaces_the_file_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "new" / "record.json"  # the folder is created
    with atomic_write(path, "w") as out:
        out.write("first")
        assert not path.exists()  # nothing under the name before the block ends
    assert path.read_text() == "first" and path.stat().st_mode & 0o777 == _usual_mode()
    with atomic_write(path) as out:
        out.write(b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]  # no temporary file left


def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path, suffix=".part") as out:
            out.write(b"half of the new")
            raise OSError("disk full")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic_write(path, "a"):
            pass
    assert path.read_bytes() == b"old"


def test_eval_mode_restores_the_previous_mode_also_on_an_error():
    model = nn.Sequential(nn.Dropout(0.5))
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not model[0].training
            raise RuntimeError("inside")
    assert model.training and model[0].training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # an eval model stays in eval


def test_value_and_grad_gaps_see_a_wrong_gradient_behind_a_right_value():
    import torch

    from companion.utils import assert_same_values_and_grads, value_and_grad_gaps

    x = torch.randn(5, 3, dtype=torch.float64)
    right, wrong = (lambda t: t.square()), (lambda t: t.square() + (t - t.detach()))  # same values, gradient + 1
    assert value_and_grad_gaps(right, lambda t: t * t, x) == (0.0, 0.0)
    value_gap, grad_gap = value_and_grad_gaps(right, wrong, x)
    assert value_gap == 0.0 and grad_gap > 0.5  # the probe's largest |entry| among 15 normal draws
    with pytest.raises(AssertionError, match="gradients w.r.t. input 0 differ"):
        assert_same_values_and_grads(right, wrong, x)
    # modules: their parameters' gradients count too, in order
    a, b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    b.load_state_dict(a.state_dict())
    assert_same_values_and_grads(a, b, x)
    with torch.no_grad():
        b.bias += 1
    with pytest.raises(AssertionError, match="values differ"):
        assert_same_values_and_grads(a, b, x)
    with pytest.raises(ValueError, match="different numbers of parameters"):
        value_and_grad_gaps(a, lambda t: a(t), x)
    with pytest.raises(TypeError, match="returns one tensor"):
        value_and_grad_gaps(lambda t: (t, t), lambda t: t, x)


def test_check_float_images_names_the_kind_of_mistake():
    check_float_images(torch.zeros(2, 3, 4, 4, dtype=torch.float16))  # any float dtype
    with pytest.raises(TypeError, match=r"pixels must be a float tensor .*torch.uint8; convert pixels"):
        check_float_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), name="pixels")
    with pytest.raises(TypeError, match="got ndarray"):
        check_float_images(torch.zeros(2, 3, 4, 4).numpy())
    with pytest.raises(ValueError, match=r"four dimensions \(B, C, H, W\), got shape \(3, 4, 4\)"):
        check_float_images(torch.zeros(3, 4, 4))


def test_dynamic_batch_shapes_exports_a_program_that_takes_any_batch():
    from companion.utils import dynamic_batch_shapes

    model = torch.nn.Linear(3, 2)
    example = (torch.randn(4, 3),)
    shapes = dynamic_batch_shapes(example)
    assert len(shapes) == 1 and set(shapes[0]) == {0}
    program = torch.export.export(model, example, dynamic_shapes=shapes).module()
    for batch in (1, 7):  # not specialised to the example's 4, nor to 1
        x = torch.randn(batch, 3)
        torch.testing.assert_close(program(x), model(x))
    assert dynamic_batch_shapes((torch.randn(2, 3), torch.randn(5)))[1] is None
    for bad in ((), (torch.tensor(1.0),), (torch.randn(1, 3),)):
        with pytest.raises(ValueError, match="batch of at least 2"):
            dynamic_batch_shapes(bad)
