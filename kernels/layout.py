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
