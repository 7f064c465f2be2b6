"""fastdrop's kernels as torch.library custom ops, so torch.compile sees them (no graph break).

Two ops:

- `fastdrop::draw_seed(token) -> Tensor`: the seed a seed=None call uses, drawn from torch's
  default CPU generator by the same function as in eager mode (`_seeds.draw_torch_seed`), returned
  as a 0-d int64 tensor. It is an opaque op tagged `nondeterministic_seeded`, so under
  torch.compile Inductor neither replaces the draw with its own RNG (which would give other
  seeds than eager), nor merges two draws (CSE), nor recomputes one in backward.
- `fastdrop::dropout(x, seed, p, offset, scale, group_ndim) -> Tensor`: the dropout kernel
  (elementwise when group_ndim == 0, one mask element per index of x's first group_ndim dims
  otherwise). Seed and offset are unsigned 64-bit values carried in int64 slots (two's
  complement, since the op schema has no uint64); the seed is a 0-d int64 tensor so that a drawn
  seed never has to become a Python int inside a compiled graph.

Dropout is linear in x, so its backward is the same op with the same (seed, p, offset, scale) on
the incoming gradient; the only tensor saved for backward is the 0-d seed, never a mask. Because
the backward is the op itself (which has this autograd formula), double backward works too.
"""
import itertools

import torch

from . import _seeds
from ._checks import MAX_U64


def to_i64(value):
    """An unsigned 64-bit value as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def seed_tensor(seed):
    return torch.tensor(to_i64(seed), dtype=torch.int64)


@torch.library.custom_op("fastdrop::draw_seed", mutates_args=(),
                         tags=(torch.Tag.nondeterministic_seeded,))
def draw_seed(token: int) -> torch.Tensor:
    """`token` is ignored; see `trace_token`."""
    return torch.tensor(_seeds.draw_torch_seed(), dtype=torch.int64)


@draw_seed.register_fake
def _(token):
    return torch.empty((), dtype=torch.int64)


_tokens = itertools.count()


@torch.compiler.assume_constant_result
def trace_token():
    """A number unique to each draw_seed call site in a traced graph.

    AOTAutograd's common-subexpression pass (torch._functorch.compile_utils.fx_graph_cse) skips
    only aten's own random ops, not ops tagged nondeterministic_seeded: two argument-less draws
    would be merged into one and two dropout layers would share a seed. A distinct constant
    argument per call keeps them apart. assume_constant_result makes Dynamo bake the value into
    the graph without guarding on it (no recompilation).
    """
    return next(_tokens)


@torch.library.custom_op("fastdrop::dropout", mutates_args=())
def dropout(x: torch.Tensor, seed: torch.Tensor, p: float, offset: int, scale: float,
            group_ndim: int) -> torch.Tensor:
    from ._torch_bridge import apply_tensor
    return apply_tensor(x, p, int(seed) & MAX_U64, offset & MAX_U64, scale, group_ndim)


@dropout.register_fake
def _(x, seed, p, offset, scale, group_ndim):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    _, seed, p, offset, scale, group_ndim = inputs
    ctx.save_for_backward(seed)
    ctx.rng = (p, offset, scale, group_ndim)


def _backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return (torch.ops.fastdrop.dropout(grad, seed, *ctx.rng),) + (None,) * 5


dropout.register_autograd(_backward, setup_context=_setup_context)
