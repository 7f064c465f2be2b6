"""The table of public masked ops that the generic tests (test_op_table.py, test_ddp.py) iterate over.

A row: the declared op (fastdrop._core.OPS) it exercises, the public call with fixed p and mode,
operand shapes, and whether it takes inplace=. An op declared later fails
`test_table_covers_every_declared_op` until it has a row here, and then gets every generic test.
"""
from typing import Callable, NamedTuple

import numpy as np

import fastdrop
from fastdrop.functional import DROPOUT
from fastdrop import _core
from fastdrop._checks import train_scale
from fastdrop.linear import DROPCONNECT, DROPCONNECT_SAMPLE, DROPOUT_LINEAR, SAMPLE_GRAD_W, SAMPLE_GRAD_X
from fastdrop.matmul import DROPOUT_MATMUL


class Case(NamedTuple):
    op: object            # the fastdrop._core.MaskedOp behind the call
    call: Callable        # call(*operands, **kw) with kw in {seed, offset, training, inplace, p}
    shapes: tuple         # operand shapes (None: an absent optional operand)
    inplace: bool = False  # the call takes inplace=
    groups: int = 0       # mask elements of a grouped op (spatial dropout, DropPath rows): the
    #                       size of the per-group factors its native route may save (_grouped.native_grouped)


F = fastdrop


def internal(op):
    """An op with no public function of its own (the per-sample DropConnect gradients), called
    through the shared pipeline as the public ops are."""
    return lambda *ops, training=True, p=0.4, **kw: _core.call(
        op, ops, p=p, training=training, scale=train_scale(p, "inverted"), **{"seed": None, "offset": 0, **kw})


CASES = {
    "dropout": Case(DROPOUT, lambda x, p=0.3, **kw: F.dropout(x, p, **kw), ((6, 10),), True),
    "dropout_classic": Case(DROPOUT, lambda x, p=0.6, **kw: F.dropout(x, p, mode="classic", **kw),
                            ((3, 1, 7),), True),
    "dropout1d": Case(DROPOUT, lambda x, p=0.4, **kw: F.dropout1d(x, p, **kw), ((2, 3, 5),), True, 6),
    "dropout2d": Case(DROPOUT, lambda x, p=0.5, **kw: F.dropout2d(x, p, **kw), ((2, 3, 4, 4),), True, 6),
    "dropout3d": Case(DROPOUT, lambda x, p=0.5, **kw: F.dropout3d(x, p, **kw), ((2, 3, 2, 2, 3),), True, 6),
    "drop_path_row": Case(DROPOUT, lambda x, p=0.4, **kw: F.drop_path(x, p, **kw), ((6, 5),), True, 6),
    "drop_path_batch": Case(DROPOUT, lambda x, p=0.5, **kw: F.drop_path(x, p, mode="batch", **kw),
                            ((3, 4),), True),
    "dropout_linear": Case(DROPOUT_LINEAR, lambda x, w, b, p=0.3, **kw: F.dropout_linear(x, w, b, p, **kw),
                           ((2, 3, 6), (5, 6), (5,))),
    "dropconnect": Case(DROPCONNECT, lambda x, w, b, p=0.4, **kw: F.dropconnect_linear(x, w, b, p, **kw),
                        ((4, 6), (5, 6), (5,))),
    "dropconnect_nobias": Case(DROPCONNECT, lambda x, w, p=0.4, **kw: F.dropconnect_linear(x, w, None, p, **kw),
                               ((4, 6), (5, 6))),
    "dropconnect_sample": Case(DROPCONNECT_SAMPLE, lambda x, w, b, p=0.4, **kw: F.dropconnect_linear(
        x, w, b, p, per_sample=True, **kw), ((4, 6), (5, 6), (5,))),
    "dropconnect_sample_grad_x": Case(SAMPLE_GRAD_X, internal(SAMPLE_GRAD_X), ((4, 5), (5, 6))),
    "dropconnect_sample_grad_w": Case(SAMPLE_GRAD_W, internal(SAMPLE_GRAD_W), ((4, 5), (4, 6))),
    "dropout_matmul": Case(DROPOUT_MATMUL, lambda a, b, p=0.3, **kw: F.dropout_matmul(a, b, p, **kw),
                           ((2, 4, 5), (2, 5, 3))),
    "dropout_matmul_bcast": Case(DROPOUT_MATMUL, lambda a, b, p=0.3, **kw: F.dropout_matmul(a, b, p, **kw),
                                 ((2, 4, 5), (5, 3))),
    # a 2-D a broadcast over b's batch: its gradient is one GEMM over the batch's columns
    "dropout_matmul_bcast_a": Case(DROPOUT_MATMUL, lambda a, b, p=0.3, **kw: F.dropout_matmul(a, b, p, **kw),
                                   ((4, 5), (2, 5, 3))),
    # size-1 batch dims on both sides (torch.matmul's broadcasting): a's gradient sums over b's heads
    "dropout_matmul_bcast1": Case(DROPOUT_MATMUL, lambda a, b, p=0.3, **kw: F.dropout_matmul(a, b, p, **kw),
                                  ((2, 1, 4, 5), (1, 3, 5, 3))),
}


def operands(case, dtype=None, seed=0):
    """Torch operands of the case (float64 by default; values away from 0 for gradcheck)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g, dtype=dtype or torch.float64) + 0.5 for s in case.shapes)


def numpy_operands(case, dtype=np.float64, seed=0):
    return tuple(t.numpy().astype(dtype) for t in operands(case, seed=seed))
