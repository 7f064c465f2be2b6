"""Which memory layouts the kernels can index directly, from shape and strides alone (pure Python,
shared by the CPU and CUDA launchers; strides in elements)."""


def dense_after(expected, dims):
    """Are dims, (stride, size) pairs in elements listed innermost first, dense starting at stride
    `expected` (size-1 dims skipped: they change no index)? The stride after them, or None."""
    for stride, size in dims:
        if size != 1:
            if stride != expected:
                return None
            expected *= size
    return expected


def groups_outermost(shape, strides, group_ndim):
    """Is an array of `shape` and element `strides` dense with its first group_ndim dims outermost,
    in order: each group one contiguous run of memory, the runs in group order? True for
    C-contiguous data and for the permuted views timm's ConvNeXt hands DropPath
    (`y.permute(0, 3, 1, 2)` of an (N, H, W, C) tensor); within a run the mask is constant, so
    the run's element order does not matter."""
    after = dense_after(1, sorted(zip(strides[group_ndim:], shape[group_ndim:])))
    return after is not None and dense_after(
        after, [(strides[d], shape[d]) for d in range(group_ndim - 1, -1, -1)]) is not None


def group_runs(shape, strides, group_ndim):
    """(outer, run) when an array of `shape` and element `strides` (no size 0) is dense with each
    group's elements (the index over its first group_ndim dims) in `outer` runs of `run`
    consecutive elements, run k of group g at memory position (k * groups + g) * run: the group
    dims dense and in order, every other dim either inside a run (a smaller stride) or outside the
    groups (a larger one). outer = 1 is `groups_outermost` (C-contiguous data, DropPath on
    channels_last); outer > 1 a sequence-first tensor transposed to batch-first, (L, N, D) viewed
    as (N, L, D), where DropPath's sample n is L runs of D. None otherwise (channels_last spatial
    dropout, whose channels are innermost, has runs of one element only where C is the whole row)."""
    gdims = [(strides[d], shape[d]) for d in range(group_ndim - 1, -1, -1) if shape[d] != 1]
    rest = sorted((s, n) for s, n in zip(strides[group_ndim:], shape[group_ndim:]) if n != 1)
    if not gdims:  # one group: any dense layout is one run
        run = dense_after(1, rest)
        return None if run is None else (1, run)
    first = gdims[0][0]  # the innermost group dim's stride: where a run ends
    inner = [(s, n) for s, n in rest if s < first]
    outer = [(s, n) for s, n in rest if s > first]
    if len(inner) + len(outer) != len(rest) or dense_after(1, inner) != first:
        return None
    after_groups = dense_after(first, gdims)
    end = None if after_groups is None else dense_after(after_groups, outer)
    return None if end is None else (end // after_groups, first)


def channels_innermost(shape, strides, group_ndim):
    """Is an array of `shape` and element `strides` dense with its last group dim (the channels,
    C) innermost at stride 1, the other dims dense outside it and the leading group dims outermost,
    in order: channels_last spatial dropout, (N, C, H, W) laid out as (N, H, W, C)? Group (a, c)
    is then every C-th element of row a (N rows). Size-1 dims are skipped."""
    c = group_ndim - 1
    if group_ndim < 1 or shape[c] < 2 or strides[c] != 1:
        return False
    after = dense_after(shape[c], sorted(zip(strides[group_ndim:], shape[group_ndim:])))
    return after is not None and dense_after(after, [(strides[d], shape[d]) for d in range(c - 1, -1, -1)]) \
        is not None


def unit_stride_dim(shape, x_strides, o_strides, x_unit=1, o_unit=1):
    """The dim `dropout_tiled` walks memory along: one of size > 1 whose stride is one element in
    both x and out (x_unit / o_unit: an element's size in the strides' unit), other than the
    last dim (the strided kernel's rows are contiguous there); None if none or if the last dim
    has size 1 (rows of one element: nothing to tile; callers drop size-1 dims first)."""
    if len(shape) < 2 or shape[-1] == 1:
        return None
    for d in range(len(shape) - 1):
        if shape[d] > 1 and x_strides[d] == x_unit and o_strides[d] == o_unit:
            return d
    return None


def merge_runs(shape, x_strides, o_strides):
    """(shape, x_strides, o_strides) with every two neighbouring dims that form one run of memory
    in both x and out merged into one (stride[d - 1] == shape[d] * stride[d]; size-1 dims already
    dropped), each merged dim keeping the stride of its innermost dim. The logical C-order index
    of every element stays the same, so the mask does, and the tiled kernel gets longer rows:
    channels_last (N, C, H, W) becomes (N, C, H*W), rows over H*W instead of W (at W = 14 a row
    was two Philox blocks). A unit-stride dim stays unit-stride (it can only absorb the dims
    before it). Strides in any one unit per array."""
    merged_shape, xs, os = [shape[0]], [x_strides[0]], [o_strides[0]]
    for d in range(1, len(shape)):
        if x_strides[d - 1] == shape[d] * x_strides[d] and o_strides[d - 1] == shape[d] * o_strides[d]:
            merged_shape[-1] *= shape[d]
            xs[-1], os[-1] = x_strides[d], o_strides[d]
        else:
            merged_shape.append(shape[d])
            xs.append(x_strides[d])
            os.append(o_strides[d])
    return tuple(merged_shape), tuple(xs), tuple(os)


def tiled_layout(shape, x_strides, o_strides, lanes):
    """(shape, x_strides, o_strides, a) as `dropout_tiled` takes them for x and out of `shape`
    with these element strides (non-negative): size-1 dims dropped (they change no logical
    index), then, where the rows after the unit-stride dim `a` are not whole Philox blocks of
    `lanes` words, runs merged (`merge_runs`: longer rows spread the tile's fixed costs; with
    rows whole blocks apart larger tiles ran 0-8% slower, docs/cpu_kernels.md). None when no dim
    but the last has unit stride in both (the strided kernel's case)."""
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    shape = tuple(shape[d] for d in dims)
    x_strides = tuple(x_strides[d] for d in dims)
    o_strides = tuple(o_strides[d] for d in dims)
    a = unit_stride_dim(shape, x_strides, o_strides)
    if a is None:
        return None
    rows = 1
    for n in shape[a + 1:]:
        rows *= n
    if rows % lanes:
        shape, x_strides, o_strides = merge_runs(shape, x_strides, o_strides)
        a = unit_stride_dim(shape, x_strides, o_strides)
    return shape, x_strides, o_strides, a
