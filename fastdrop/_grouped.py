"""The native route of the grouped masks under autograd, and the layout questions it asks.

Spatial dropout and DropPath rows draw one mask element per group. For a small CPU float32/float64
tensor that needs grad (or a smaller float16/bfloat16 one, computed in float32), the op is
recorded as torch's own multiply by per-group factors, y = x * f (f = scale or 0, one value per
group), whose backward is torch's C++ grad * f, instead of the Python autograd.Function around the
one-pass kernel: inside a training step, where every call runs cold, the Function's Python cost
more than the kernel. The dropped groups of y are then set to exact zeros outside autograd (x * 0
keeps inf and NaN, and gives -0.0 for a negative x), so the output is the kernel's, bit for bit.
The pipeline (`_core.torch_apply`) and the training lane (`_core.training_lane`) have checked x (a
plain CPU tensor of those dtypes) before they ask. Measurements: docs/cpu_kernels.md, "Grouped ops
under autograd" and "Half types on the native route, and by address".
"""
import math
import sys

from .kernels import dropout_cpu
from .kernels.config import TORCH_GRAIN_SIZE
from .kernels.layout import channels_innermost, group_runs
from .kernels.philox import LANES, keep_threshold


# Grouped ops under autograd below this many output bytes take torch's own multiply
# (`native_grouped`); above it the one-pass kernel and the output cache (`_alloc.MIN_BYTES`) win.
NATIVE_GROUPED_MAX_BYTES = 32 << 20

# float16/bfloat16 below this many bytes too, computed in float32: y = (x * f).to(x.dtype), f in
# float32 (a half f would round the scale 1/(1-p), and the product twice). Two passes and a float32
# temporary where the kernel makes one pass: the small calls, where the Function's Python is most
# of the time (docs/cpu_kernels.md, "Half types on the native route, and by address": ahead of the
# Function at 192 KiB, behind at 256 since the Function's kernels take half tensors by address).
NATIVE_HALF_MAX_BYTES = 256 << 10


# ... and while the dropped groups, which it zeroes in a pass of its own, span at most this many
# bytes (about a core's L2 here); above, the one-pass kernel's Python backward costs less than that
# pass (docs/cpu_kernels.md, "Grouped ops under autograd").
NATIVE_ZERO_MAX_BYTES = 512 << 10


# The zero pass runs on torch's threads (the lines the multiply wrote on each core) from this
# many zeroed bytes; below, on the calling thread. Inside a training step, where other layers
# have evicted those lines anyway, the serial pass cost 5.3 vs 11.0 us (ResNet-like, batch 8, one
# of 8 samples dropped: 64 KiB) and 10.9 vs 13.3 us (Dropout2d CNN, batch 8: ~100 KiB); in a
# warm loop over one layer (Dropout2d 8x16x32x32, p = 0.5: ~256 KiB) the parallel pass wins,
# 74.6 vs 95.7 us fwd+bwd (docs/cpu_kernels.md, "Grouped ops under autograd").
ZERO_PARALLEL_MIN_BYTES = 128 << 10


def grouped_runs(x, group_ndim):
    """(outer, run) when x's memory is dense with each group (an index over its first group_ndim
    dims) in `outer` runs of `run` elements, run r of group r % groups (kernels/layout.py,
    `group_runs`): one run per group for contiguous data and timm's permuted ConvNeXt branch;
    L runs of D per sample for a sequence-first (L, N, D) tensor seen as (N, L, D). Runs shorter
    than LANES elements with several per group (a transposed matrix's columns) give None: a run
    per element would cost the flat kernels more than the general route's copy."""
    layout = group_runs(x.shape, x.stride(), group_ndim)
    if layout is None or layout[0] > 1 and layout[1] < LANES:
        return None
    return layout


def native_layout(x, g, p, n, nbytes):
    """The layout `native_grouped` needs, (groups, the shape of the factors, run, channels), for
    x with mask-shape rule g > 0 (a CPU tensor of a plain class, float32/float64 or a smaller
    float16/bfloat16 one, checked by the caller, with n elements of nbytes bytes in all), when the route applies, else None: x's groups
    lie in runs of memory (`grouped_layout`: contiguous, timm's permuted ConvNeXt branch, a
    sequence-first tensor seen batch-first) or its channels innermost (`_channels_layout`:
    channels_last spatial dropout), its output is one the output cache would not serve, and
    its dropped groups are expected (p of x) to fit NATIVE_ZERO_MAX_BYTES twice over (the draw
    decides; this only saves drawing factors that would not be used)."""
    if n == 0 or nbytes >= (NATIVE_HALF_MAX_BYTES if x.element_size() == 2 else NATIVE_GROUPED_MAX_BYTES) or \
            p * nbytes > 2 * NATIVE_ZERO_MAX_BYTES:
        return None
    key = (x.shape, x.stride(), g)
    layouts = GROUPED_LAYOUTS.get(key) or _new_layouts(x, g, key)
    return layouts[0] or layouts[1] or None


# (shape, strides, g) -> (groups in runs, channels innermost): the answers of `grouped_layout` and
# `_channels_layout`, False for no; a training step meets a few shapes per layer, and for a
# permuted x the pure-Python layout check cost more than the multiply's own bookkeeping (bounded:
# shapes from a varying batch or resolution are cleared, not kept forever)
GROUPED_LAYOUTS = {}


def _new_layouts(x, g, key):
    shape = x.shape
    if len(GROUPED_LAYOUTS) >= 256:
        GROUPED_LAYOUTS.clear()
    groups, factor_shape = math.prod(shape[:g]), tuple(shape[:g]) + (1,) * (len(shape) - g)
    if groups == x.numel():  # one element per group: the elementwise kernels (`one_element_groups`)
        layouts = GROUPED_LAYOUTS[key] = (False, False)
        return layouts
    runs = grouped_runs(x, g) if x.numel() else None
    inner = runs is None and x.numel() and channels_innermost(shape, x.stride(), g)
    layouts = GROUPED_LAYOUTS[key] = (runs is not None and (groups, factor_shape, runs[1], 0),
                                      bool(inner) and (groups, factor_shape, 0, shape[g - 1]))
    return layouts


def one_element_groups(shape, g):
    """Is every group of a grouped op (mask-shape rule g > 0) on this shape one element: the dims
    after the first g all 1 (pooled (N, C, 1, 1) features under spatial dropout, a 1-D batch under
    DropPath)? Group i is then element i in row-major order, so the group mask is the elementwise
    mask of the same seed and offset, bit for bit (README, "The mask"), and the elementwise
    kernels serve the op: the grouped kernels walk a run per element (Dropout2d of 256x4096x1x1
    took 9.3 ms, 0.7x torch's time, where elementwise dropout of 2^20 elements takes ~0.4 ms)."""
    return g > 0 and all(d == 1 for d in shape[g:])


def grouped_layout(x, g):
    """(groups, factor shape, run, 0) of x with mask-shape rule g > 0 when its groups lie in runs
    of `run` elements of memory (`grouped_runs`), else None."""
    key = (x.shape, x.stride(), g)
    return (GROUPED_LAYOUTS.get(key) or _new_layouts(x, g, key))[0] or None


def _channels_layout(x, g):
    """(groups, factor shape, 0, C) of x with mask-shape rule g > 0 when its last group dim, C,
    is innermost in memory (channels_last spatial dropout: kernels/layout.py,
    `channels_innermost`), else None."""
    key = (x.shape, x.stride(), g)
    return (GROUPED_LAYOUTS.get(key) or _new_layouts(x, g, key))[1] or None


def native_grouped(x, p, seed, offset, scale, g, layout, inplace=False):
    """Spatial dropout / DropPath of a tensor under autograd (`_native_groups` said yes),
    recorded with torch's own multiply: y = x * f, f the per-group factors (scale or 0,
    `group_factors_at`), then the dropped groups of y set to exact zeros outside autograd (x * 0
    keeps x's inf and NaN, and gives -0.0 for negative x). Backward is torch's C++ multiply,
    grad * f, instead of a Python autograd.Function, which inside a training step, where every
    call runs cold, cost more than the kernel (docs/cpu_kernels.md, "Grouped ops under
    autograd"). Output: bit for bit the kernel's. Gradient: the kernel's for a finite incoming
    gradient, up to the sign of a zero (grad * 0); an inf or NaN incoming gradient in a dropped
    group gives NaN there, as torch's own dropout does, where the kernel gives 0. Saved for
    backward: f, one value per group, never a mask of x's size. Not under forward-mode AD, whose
    tangent t * f would have the same NaN. seed, offset: ints below 2^63. inplace: x.mul_(f),
    then the zeros in x (an activation, not a leaf nor a view: the caller checked). A float16 /
    bfloat16 x (small, not in place: the callers checked) is multiplied by float32 factors, the
    zeros go into the float32 product, which is then rounded to x's dtype once, as the kernel
    rounds it: y = (x * f).to(x.dtype), the kernel's bits but for a NaN's (torch's conversion
    writes its own NaN bits)."""
    torch = sys.modules["torch"]
    groups, factor_shape, run, channels = layout
    half = x.element_size() == 2
    f64, thr = x.element_size() == 8, _INT_THRESHOLDS.get(p)
    if thr is None:  # (T(p) may be 0: p within 2^-16 of 1)
        thr = _int_threshold(p)
    C = torch._C
    if C._len_torch_dispatch_stack() or C._is_torch_function_mode_enabled():
        # a mode could hand back something else (a wrapper subclass without memory, another
        # dtype): the kernel writes through the address, so the factors are made past the modes
        # (they see the multiply, as they saw torch.from_numpy's tensor before 2026-12-06)
        with C._DisableTorchDispatch(), C.DisableTorchFunction():
            factors = x.new_empty(factor_shape, dtype=torch.float32 if half else x.dtype)
    else:
        factors = x.new_empty(factor_shape, dtype=torch.float32 if half else x.dtype)  # on the CPU
    count = dropout_cpu.group_factors_at(factors.data_ptr(), groups, seed, offset, thr, scale, f64)
    n = x.numel()
    zero_bytes = count * (n // groups) * factors.element_size()
    if zero_bytes > NATIVE_ZERO_MAX_BYTES:
        return None
    y = x.mul_(factors) if inplace else x * factors  # (a half x: the float32 product, type promotion)
    if count:
        # x's dense layout and dtype, which torch's multiply keeps: the zeros go straight to y's
        # memory (the kernel writes n elements of x's dtype there, so both are checked)
        if _zeroable_in_place(torch, y, x, g, run, factors.dtype):
            # on the threads that wrote y, where torch's multiply ran on several (kernel
            # docstring), unless the zeros are few (ZERO_PARALLEL_MIN_BYTES; channels innermost:
            # every element is read and written)
            parallel = n >= TORCH_GRAIN_SIZE and torch.get_num_threads() > 1 and (
                channels or zero_bytes >= ZERO_PARALLEL_MIN_BYTES)
            if channels:
                zero = dropout_cpu.zero_dropped_inner_at if parallel else dropout_cpu.zero_dropped_inner_at.serial
                zero(y.data_ptr(), n, groups // channels, channels, seed, offset, thr, f64)
            else:
                zero = dropout_cpu.zero_dropped_runs_at if parallel else dropout_cpu.zero_dropped_runs_at.serial
                zero(y.data_ptr(), n, run, groups, seed, offset, thr, f64)
        else:  # not met for a dense x; the general tool, in case a torch lays y out otherwise
            with torch.no_grad():
                y.masked_fill_(factors == 0, 0.0)
    return y.to(x.dtype) if half else y


# p -> T(p) as a Python int (`kernels/philox.keep_threshold`): Numba's dispatcher types an int
# faster than the numpy scalar `kernel_threshold` caches, and a step reuses a few p's (bounded, as
# a schedule's p's are)
_INT_THRESHOLDS = {}


def _int_threshold(p):
    if len(_INT_THRESHOLDS) >= 256:
        _INT_THRESHOLDS.clear()
    thr = _INT_THRESHOLDS[p] = keep_threshold(p)
    return thr


def _zeroable_in_place(torch, y, x, g, run, dtype):
    """Can `zero_dropped_runs_at` write y's dropped groups through its flat memory: a plain tensor
    with memory (a dispatch mode may hand back a subclass: under FakeTensorMode with real inputs
    y is a fake tensor whose data_ptr() is 0, and writing there crashed the process), of dtype (the
    factors', which the kernel writes: x's, float32 for a half x) and x's shape, and its groups
    where `native_layout` found x's, in runs of `run` or (run 0) with the channels innermost (y
    with x's strides has them; torch's multiply keeps a dense input's strides, up to those of
    size-1 dims)?"""
    return type(y) is torch.Tensor and y.dtype == dtype and y.shape == x.shape and (
        y.stride() == x.stride() or
        (group_runs(y.shape, y.stride(), g) == (y.numel() // (run * _groups(y, g)), run) if run else
         channels_innermost(y.shape, y.stride(), g)))


def _groups(x, g):
    return math.prod(x.shape[:g])
