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
