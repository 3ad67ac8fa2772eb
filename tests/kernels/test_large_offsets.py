"""Row offsets beyond 2^31 elements: the row kernels compute `row * stride` in int64.

A row stride that fits in int32 reaches Triton as an i32 argument; `row` must be int64 before the product,
or rows past 2^31 / stride wrap around (N * V > 2^31 is every production batch: 16k tokens x 128k vocab).
The check runs the three row passes on strided views into one buffer whose third row starts past 2^31
elements. On the CPU the buffer is virtual memory that is never touched beyond the few rows used (the
interpreter works on the raw addresses); on CUDA it is a real 4 GiB allocation. With the int64 cast
removed, row 2's offset wraps to -2^31 + 128 and the run dies on an unmapped address (seen: a segfault
under the interpreter), so a regression cannot pass silently.
"""

from __future__ import annotations

import pytest
import torch
from kd_testing import assert_close

from nemo_subnet.kernels import Divergence
from nemo_subnet.kernels._common import make_spec
from nemo_subnet.kernels._rowwise import backward_rows, forward_rows

ROW_STRIDE = 2**30 + 64  # fits in int32 (so Triton types it i32); row 2 starts at 2^31 + 128 > int32 max
N_ROWS, V, VOCAB = 3, 300, 290


@pytest.mark.triton
@pytest.mark.parametrize("divergence", [Divergence.FORWARD_KL, Divergence.JSD])
def test_rows_past_2_31_elements(divergence, device):
    assert (N_ROWS - 1) * ROW_STRIDE > 2**31 - 1 and ROW_STRIDE < 2**31
    buffer = torch.empty((N_ROWS - 1) * ROW_STRIDE + 3 * V, dtype=torch.bfloat16, device=device)  # [virtual]

    def rows(offset):  # [3, V] view with row stride ROW_STRIDE, column block `offset` of each row
        return buffer.as_strided((N_ROWS, V), (ROW_STRIDE, 1), offset * V)

    student, teacher, grad = rows(0), rows(1), rows(2)
    g = torch.Generator().manual_seed(0)
    student.copy_(torch.randn(N_ROWS, V, generator=g) * 2)
    teacher.copy_(torch.randn(N_ROWS, V, generator=g) * 2)
    labels = torch.tensor([1, 7, VOCAB - 1], device=device)
    weights = torch.ones(N_ROWS, device=device)
    spec = make_spec(divergence, 0.5, 2.0, True, 0.7, 0.3)

    loss, saved, ce = forward_rows(student, teacher, weights, labels, spec, True, VOCAB)
    backward_rows(student, teacher, labels, saved, weights, spec, True, VOCAB, out=grad)
    s, t = student.contiguous(), teacher.contiguous()  # the torch mirror on compact copies
    want_loss, want_saved, want_ce = forward_rows(s, t, weights, labels, spec, False, VOCAB)
    want_grad = backward_rows(s, t, labels, want_saved, weights, spec, False, VOCAB)
    assert_close(loss, want_loss, torch.bfloat16)
    assert_close(ce, want_ce, torch.bfloat16)
    assert_close(grad.float(), want_grad.float(), torch.bfloat16, grad=True)
    assert torch.all(grad[:, VOCAB:] == 0)
