"""What torch is doing around a call: compiling, tracing, a dispatch mode, torch.func transforms
and their vmap levels, forward-mode AD, CUDA-graph capture (autocast: `_autocast`).

The pipeline (`_core`) asks these before it picks a route: each such state needs the custom op, a
refusal, or the eager Function instead of the kernels on raw memory. Every query takes torch as
loaded (`sys.modules["torch"]`, or the module passed in): fastdrop never imports torch itself.
"""
import functools
import sys


def batched_levels(torch, operands):
    """The vmap levels some operand is batched at (functorch's wrappers unwrapped: a vmap of a
    grad wraps the batched tensor)."""
    functorch = torch._C._functorch
    batched = set()
    for a in operands:
        while a is not None and functorch.is_functorch_wrapped_tensor(a):
            if functorch.is_batchedtensor(a):
                batched.add(functorch.maybe_get_level(a))
            a = functorch.get_unwrapped(a)
    return batched


def unwrapped(torch, a):
    """a with torch.func's wrappers (grad and vmap levels) taken off: the tensor whose memory the
    kernels get once the transforms' Function calls have unwrapped it."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(a):
        a = functorch.get_unwrapped(a)
    return a


def batched_for_vmap(torch, operands):
    """operands with x batched at the innermost vmap level when no operand is and that level's
    randomness is "different" (the dropout family; `_vmap_refusal` refused every other case): x
    expanded over the level's batch, so the op's vmap rule gives every example its own mask, as
    torch's random ops do for a value the batch shares."""
    functorch = torch._C._functorch
    interpreters = functorch_interpreters(torch)
    top = interpreters[-1] if interpreters else None
    if top is None or top.key() != functorch.TransformType.Vmap or top.randomness() != "different" or \
            top.level() in batched_levels(torch, operands):
        return operands
    x = operands[0]
    x = functorch._add_batch_dim(x.expand(top.batch_size(), *x.shape), 0, top.level())
    return (x, *operands[1:])


def compiling():
    return sys.modules["torch"].compiler.is_compiling()


def grad_enabled():
    return sys.modules["torch"].is_grad_enabled()


def capturing(torch, device):
    """Is torch's current stream on CUDA `device` capturing a CUDA graph?"""
    if device.index == torch.cuda.current_device():
        return torch.cuda.is_current_stream_capturing()
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def modes_on(torch):
    """Is a Python dispatch mode or a torch-function mode on for this thread?"""
    C = torch._C
    return bool(C._len_torch_dispatch_stack() or C._len_torch_function_stack())


class modes_off:
    """The thread's Python dispatch modes off and its torch-function modes lifted for the block
    (put back after it); a subclass's own __torch_function__ still runs, so a subclass input's
    output keeps its type (torch's DisableTorchFunction turned that off too, a review found)."""

    def __enter__(self):
        C = sys.modules["torch"]._C
        self._dispatch = C._DisableTorchDispatch()
        self._dispatch.__enter__()
        self._modes = [C._pop_torch_function_stack() for _ in range(C._len_torch_function_stack())]

    def __exit__(self, *exc):
        C = sys.modules["torch"]._C
        for mode in reversed(self._modes):
            C._push_on_torch_function_stack(mode)
        self._dispatch.__exit__(*exc)


def past_modes(fn):
    """fn run with the thread's modes off (`modes_off`), where one is on: a kernel route that
    allocates, copies and then writes through addresses. A mode could hand back another tensor
    from torch.empty_like or .contiguous() (a wrapper subclass without memory, another dtype or
    size): the kernels wrote through address 0 or past the buffer's end (a segfault, a heap
    overflow; a review, 2026-12-07). The modes still see what the route does to the caller's
    tensors (`announce_write` before a write, torch's multiply and GEMMs outside these routes);
    an allocation of fastdrop's own is not theirs to change."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        torch = sys.modules.get("torch")  # (numpy calls run without torch imported)
        if torch is not None and modes_on(torch):
            with modes_off():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


def tracing_dispatch_mode(torch):
    """Is a make_fx trace (torch's proxy mode) or fake-tensor propagation (FakeTensorMode, which
    also takes real tensors with allow_non_fake_inputs) running on this thread? Both see torch's
    ops only: the kernels' writes through numpy views would be lost from a make_fx graph (its
    replay returned uninitialized memory), and a fake tensor has no memory to write."""
    key = torch._C._TorchDispatchModeKey
    # (the stack's length first: one C call, where the two mode queries cost 1.2 us on every
    # training-lane call; proxy and fake modes count in it)
    if torch._C._len_torch_dispatch_stack():
        get = torch._C._get_dispatch_mode
        if get(key.PROXY) is not None or get(key.FAKE) is not None:
            return True
    # make_fx(pre_dispatch=True) keeps its proxy mode on the pre-dispatch stack, and torch marks
    # any mode there by including the PreDispatch key in the thread's dispatch keys: one C query,
    # where torch's Python accessor of that stack cost several microseconds on every training-lane
    # call run cold (a pre-dispatch functionalization mode counts too: the torch-ops route is right
    # under it as well)
    global _PRE_DISPATCH_QUERY
    if _PRE_DISPATCH_QUERY is None:
        _PRE_DISPATCH_QUERY = _pre_dispatch_query(torch)
    return _PRE_DISPATCH_QUERY()


_PRE_DISPATCH_QUERY = None


def _pre_dispatch_query(torch):
    """A no-argument function: is a pre-dispatch mode (make_fx(pre_dispatch=True)) set on this
    thread? torch's TLS key query; where a torch lacks it, its private stack accessor; a torch
    with neither has no such stack to ask."""
    included = getattr(torch._C, "_dispatch_tls_is_dispatch_key_included", None)
    key = getattr(torch._C.DispatchKey, "PreDispatch", None)
    if included is not None and key is not None:
        return functools.partial(included, key)
    accessor = getattr(torch._ops, "_get_dispatch_mode_pre_dispatch", None)
    if accessor is not None:
        return lambda: accessor(torch._C._TorchDispatchModeKey.PROXY) is not None
    return lambda: False


NO_LEVELS = {}


def forward_ad_active(torch):
    """A forward-mode AD level is open: torch.autograd.forward_ad.dual_level, which torch.func.jvp
    opens too (a Python global: Dynamo reads it, where it cannot call the functorch queries)."""
    return torch.autograd.forward_ad._current_level >= 0


def grad_transform_active(torch, x):
    """Under Dynamo: a torch.func transform is active that the custom op cannot serve, so the call
    runs eagerly (a graph break): x is not a vmap's BatchedTensor (the innermost transform is
    grad, vjp or jacrev, whose GradTrackingTensor x is; or a vmap that does not batch x), or it is
    one inside an outer transform (the custom op's vmap rule would run its autograd under a grad
    transform around the vmap, which torch.func refuses; an outer vmap runs eagerly too,
    correctly). Queries Dynamo evaluates while tracing; it graph-breaks on the functorch
    interpreter stack that `grad_levels_active` reads, and a graph break on every compiled call
    would split every graph; the innermost interpreter, coerced as torch.func does, it reads as a
    constant. A level is its depth in the stack: 1 is the outermost transform."""
    if not torch._C._are_functorch_transforms_active():
        return False
    if not torch._C._functorch.is_batchedtensor(x):
        return True
    innermost = torch._functorch.pyfunctorch.coerce_cinterpreter(torch._C._functorch.peek_interpreter_stack())
    return innermost.level() > 1


def functorch_interpreters(torch):
    """The torch.func transforms active now, outermost first (none where torch lacks the query)."""
    if not torch._C._are_functorch_transforms_active():
        return ()
    pyfunctorch = getattr(torch._functorch, "pyfunctorch", None)
    if pyfunctorch is None:  # pragma: no cover - torch without the query: no replay, no refusal
        return ()
    return pyfunctorch.retrieve_all_functorch_interpreters()


def grad_levels_active(torch):
    """A torch.func grad transform (grad, vjp, jacrev) is active, at any level (eager Python)."""
    grad = torch._C._functorch.TransformType.Grad
    return any(i.key() == grad for i in functorch_interpreters(torch))


def vmap_levels(torch):
    """{level: randomness} of the torch.func.vmap transforms active now."""
    vmap = torch._C._functorch.TransformType.Vmap
    return {i.level(): i.randomness() for i in functorch_interpreters(torch) if i.key() == vmap}
