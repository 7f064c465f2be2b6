"""torch.autocast and the GEMM ops (dropout_linear, DropConnect, dropout_matmul): which dtypes
their operands go in with, and the region their custom ops run under.

torch's composite, e.g. F.linear(dropout(x), W) under autocast to a half type h, masks x in x's own
dtype, and the GEMM's autocast casts the masked product and W to h; its backward runs the GEMM in
h, autocast's cast node takes the result back to x's dtype, and dropout's backward scales it
there. The dense ops follow that rule exactly:
    operands     go in as they are: float32, h, or a mix of the two (a half activation meeting a
                 layer's float32 weight); the other half type is cast to h, float64 is left alone
    forward      mask the masked operand in its own dtype; the GEMMs run under autocast (to h)
    backward     GEMMs under the forward's autocast; the result in the masked operand's dtype
                 before the mask scales it (`in_dtype_of`: in h, 1/(1-p) overflowed float16)
    gradients    each in its operand's dtype
An op whose products are its own kernel's (per-sample DropConnect) gets every operand in h, as
autocast would cast a GEMM's, but for a float32 masked operand, so its gradient is scaled in
float32 too. A compiled graph calls a custom op's body where autocast is off: the op takes
autocast's dtype as an argument (`library_arg`; filled in by its autocast kernel where a call
under autocast leaves it out, `register_autocast_kernels`) and re-enters it (`library_region`).
"""
import contextlib
import sys


def autocast_state(x):
    """(device type, dtype) of the autocast region the forward runs in for x's device, or None.
    Backward runs outside any autocast region unless it re-enters the forward's, as
    torch.amp.custom_bwd does; without that, a bfloat16 gradient of an autocast GEMM meets a
    float32 saved weight in the backward's GEMM."""
    if x is None:
        return None
    torch = sys.modules["torch"]
    device = "cuda" if x.is_cuda else "cpu"  # the only devices _checks lets through
    if not torch.is_autocast_enabled(device):
        return None
    return device, torch.get_autocast_dtype(device)


def mixed_dtypes(op, operands):
    """The dtypes of a GEMM op's tensor operands where they are a mix the op computes under autocast
    (`gemm_operands`): float32 and half types, x half for an op whose kernels take x's dtype
    (`_upcast` computes every operand in float32 then); else None (check_companions refuses)."""
    torch = sys.modules["torch"]
    if not all(a is None or isinstance(a, torch.Tensor) for a in operands):
        return None
    dtypes = {a.dtype for a in operands if a is not None}
    if len(dtypes) < 2 or not dtypes <= set(lower_dtypes(torch)) or \
            (op.own_products and operands[0].dtype not in (torch.float16, torch.bfloat16)):
        return None
    return dtypes


def lower_dtypes(torch):
    """The dtypes autocast casts to its own for a GEMM (float64 it leaves)."""
    return torch.float32, torch.float16, torch.bfloat16


def gemm_operands(op, operands):
    """(operands, mixed) for the tensor operands of a GEMM op under torch.autocast. Mixed half /
    float32 dtypes (a bfloat16 activation meeting a layer's float32 weight, as in every layer after
    an autocast one) are left as they are, and mixed is the set of dtypes the op then takes: it
    computes its half operands in float32 (`_upcast`), masks its operand in that operand's own
    precision, and its GEMMs' autocast casts the masked product, as torch's Dropout + Linear
    composite does; each gradient comes back in its operand's dtype, and only the operands
    themselves are saved for backward. (They were all cast to the half type first: a float32
    operand's masked product was rounded twice, and its float16 gradient scaled past 65504 became
    inf; a review, 2026-12-06.) float64 aside (autocast leaves it, and torch refuses the mix, as
    check_companions then does). Matching dtypes are left to the GEMMs' own autocast, but for a
    half type that is not autocast's (float16 operands under bfloat16 autocast), cast as torch's
    linear casts it. An op whose products are its own kernel's, not an autocast GEMM (per-sample
    DropConnect), gets its operands in autocast's dtype as autocast would cast them, but for a
    float32 masked operand (`cast_but_masked`). mixed is None where the operands have one dtype."""
    torch = sys.modules["torch"]
    present = [a for a in operands if a is not None]
    if not all(isinstance(a, torch.Tensor) for a in present):
        return operands, None  # (other kinds: check_companions says what is wrong)
    dtypes = {a.dtype for a in present}
    if torch.float64 in dtypes or (not op.own_products and dtypes == {torch.float32}):
        return operands, None  # (autocast leaves float64; float32 alone is the GEMMs' own autocast's)
    device = "cuda" if operands[0].is_cuda else "cpu"
    if not torch.is_autocast_enabled(device):
        return operands, None
    dtype = torch.get_autocast_dtype(device)
    if op.own_products:
        operands = cast_but_masked(op, operands, dtype)
        dtypes = {a.dtype for a in operands if a is not None}
        return operands, dtypes if len(dtypes) > 1 else None
    if len(dtypes) < 2 and dtypes <= {dtype, torch.float32}:
        # float32 ones too: the GEMMs' own autocast computes them in its dtype. A half type that is
        # not autocast's (float16 operands under bfloat16 autocast) is cast, as torch's linear
        # casts it: the op's float32 computation of half operands came back in the operands' type
        return operands, None
    if len(dtypes) > 1 and dtypes <= set(lower_dtypes(torch)):
        return operands, dtypes
    return tuple(a.to(dtype) if a is not None and a.is_floating_point() else a for a in operands), None


def cast_but_masked(op, operands, dtype):
    """op's float32 / half operands in autocast's dtype, as autocast casts a GEMM's operands, but
    for the masked operand where it is float32: the mask scales it (and its gradient) in float32,
    and the op takes the pair as mixed operands."""
    torch = sys.modules["torch"]
    return tuple(a if a is None or a.dtype == dtype or a.dtype not in lower_dtypes(torch)
                 or (i == op.masked and a.dtype == torch.float32) else a.to(dtype)
                 for i, a in enumerate(operands))


def library_arg(op, x):
    """The autocast dtype a GEMM op's custom op gets (its `autocast` argument) where autocast is
    on for x's device, else None. Its body runs where the compiled graph calls it, with autocast
    off: it re-enters this one around its checks and its forward (`library_region`), and its
    backward too, so a compiled call takes the operands the eager call takes (mixed half /
    float32 ones as they are, the masked product cast by its GEMMs' autocast) and gives eager's
    bits. (The graph cast every operand first: a float32 masked operand's product was rounded
    twice, and its float16 gradient scaled past 65504 was inf where eager's is finite.)"""
    if not op.upcast_half:
        return None
    state = autocast_state(x)
    return None if state is None else state[1]


def library_dtype(op, autocast):
    """The autocast dtype a custom op runs its body and backward under: its `autocast` argument,
    which `register_autocast_kernels` fills in where a call under autocast leaves it None (a
    graph made outside autocast or before the argument, a direct call); None for an op without
    GEMMs. ValueError for a dtype autocast does not take (the fake would announce an output of
    that dtype, and the body give another)."""
    torch = sys.modules["torch"]
    if autocast is not None and autocast not in (torch.float16, torch.bfloat16):
        raise ValueError(f"fastdrop::{op.name}: autocast must be torch.float16, torch.bfloat16 or None, "
                         f"got {autocast}")
    return autocast if op.upcast_half else None


_KERNELS = []  # the torch.library.Library holding the autocast kernels (alive as long as the ops)


def register_autocast_kernels(op, overload, n):
    """AutocastCPU / AutocastCUDA kernels for a GEMM op's custom op (n tensor operands): a call
    made under autocast with its `autocast` argument None gets autocast's dtype there, then goes
    on below autocast. The dispatcher runs this before autograd, fake tensors and tracing modes,
    so the real call, its fake and a graph traced under autocast (a program exported outside
    autocast, compiled inside it) all see the dtype the body runs under; reading torch's
    autocast state inside the body instead, a compiled graph (where it is off) and the fake gave
    float32 where the eager call gave autocast's dtype (a review)."""
    torch = sys.modules["torch"]
    if not _KERNELS:
        _KERNELS.append(torch.library.Library("fastdrop", "IMPL"))
    for device in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_, *args, device=device, excluded=excluded):
            if len(args) < n + 7 or args[n + 6] is None:  # (the old form leaves the defaults out)
                args = (*args[:n + 5], args[n + 5] if len(args) > n + 5 else False,
                        torch.get_autocast_dtype(device))
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return overload(*args)
        _KERNELS[0].impl(op.name, kernel, key, with_keyset=True)


def library_region(op, x, dtype):
    """The region a custom op's body runs its checks and forward in: autocast to dtype (its
    `autocast` argument) on x's device, or none."""
    if dtype is None:
        return contextlib.nullcontext()
    return sys.modules["torch"].autocast("cuda" if x.is_cuda else "cpu", dtype=dtype)


def in_dtype_of(a, ref):
    """a in ref's dtype: a backward's GEMM result, which under torch.autocast comes back in
    autocast's half type, before the mask scales it as the gradient of ref (a float32 operand),
    as torch's composite scales it (its dropout's backward runs after autocast's cast node, in
    float32: in the half type 1/(1-p) overflowed float16 to inf and rounded twice). Arrays and
    matching dtypes pass through."""
    return a if a.dtype == ref.dtype else a.to(ref.dtype)
