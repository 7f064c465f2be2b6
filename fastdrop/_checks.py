"""Validation shared by every public entry point: everything is checked before any seed is drawn,
any memory is touched or any kernel compiles, so a refused call changes nothing.

Also the one place that decides where data lives (numpy array, torch tensor, CUDA device array)
and turns numpy's odd-but-valid inputs (np.matrix, big-endian arrays) into plain arrays.
"""
import collections.abc
import math
import numbers
import sys
import warnings

import numba
import numpy as np

from .kernels.philox import MAX_U64  # noqa: F401  (re-exported: every seed and offset check)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
MODES = ("inverted", "classic")
NUMPY, TORCH, CUDA_ARRAY = "numpy", "torch", "cuda_array"


class RankError(ValueError, RuntimeError):
    """Input of an unsupported rank (a ValueError; also a RuntimeError, which torch raises)."""


class InplaceLeafError(ValueError, RuntimeError):
    """In-place dropout of a leaf that requires grad, or of a view of one (a ValueError; also the
    RuntimeError torch raises, so `except RuntimeError` written for torch's modules catches it)."""


def check_p(p, name="p"):
    """p must be a real number in [0, 1]; returns it as a Python float."""
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, first (NaN fails the comparison)
        return p
    p = python_number(p)
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(p, torch.Tensor):
            # (not its repr, which a compiled graph cannot trace: the reason got lost there)
            raise TypeError(f"{name} must be a real number in [0, 1], got a tensor: pass a Python float "
                            f"({name}.item())")
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(p).__name__} {shown(p)}")
    if outside_unit_interval(p):
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {name}={shown_number(p)}")
    return float(p)


def python_number(v):
    """v as its Python number when it is a numpy scalar or 0-d array, else v as given. Under
    torch.compile Dynamo sees a numpy scalar as a 0-d array, which fails a numbers.Real check (and
    whose repr it cannot trace); a module given a numpy p stores the Python number, which compile
    reads as a constant (torch's own modules fail there)."""
    if isinstance(v, (np.generic, np.ndarray)) and v.ndim == 0:
        return v.item()
    return v


def outside_unit_interval(p):
    """Is a real p NaN or outside [0, 1]? An int, Fraction or numpy float (a longdouble) is
    compared exactly: float() would round 1 + 10**-400 or np.longdouble(1) + 2**-60 to 1.0
    (inside) and raise OverflowError for 10**400 (a NaN fails the comparison: outside)."""
    if isinstance(p, (numbers.Rational, np.floating)):
        return not 0 <= p <= 1
    p = float(p)
    return math.isnan(p) or not 0.0 <= p <= 1.0


def shown_number(v):
    """v for a message: str() of an int past Python's digit limit (4300) raises a ValueError."""
    try:
        return str(v)
    except ValueError:
        return f"{'-' if v < 0 else ''}about 10**{int(math.log10(int(abs(v)) or 1))} ({type(v).__name__})"


def shown(v, _depth=0):
    """repr(v) for a message, where an int past Python's digit limit for str() (4300 digits),
    alone or in a (not deeply nested) tuple or list, reads as `shown_number` writes it instead of
    raising; another value whose repr raises (a Fraction of such ints) by its type's name."""
    if isinstance(v, (tuple, list)) and _depth < 2:
        inner = ", ".join(shown(e, _depth + 1) for e in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(v, torch.Tensor) and torch.compiler.is_compiling():
        # a compiled graph cannot trace a tensor's repr: Dynamo's "repr() on tensor" replaced the
        # whole message (a review)
        return "(a tensor; pass a Python number: .item())"
    try:
        return repr(v)
    except ValueError:
        return shown_number(v) if isinstance(v, numbers.Integral) else f"<{type(v).__name__}>"


def check_bool(value, name):
    """A flag must be a bool (or numpy's): truthiness would make "False" (a string from a config
    file) or 0.5 switch the flag on. Returns it as a Python bool."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {shown(value)}")


def module_inplace_flag(inplace):
    """A module's inplace= as a bool: torch's modules take any value and read its truth, fastdrop's
    ops take bools only (a "False" string from a config would write into x); 0 and 1 (a torch
    model's inplace=0, which fastdrop.nn.convert carries over) become bools, anything else is
    refused when the module is built, not at its first forward."""
    if inplace is True or inplace is False or isinstance(inplace, np.bool_):
        return bool(inplace)
    if isinstance(inplace, numbers.Integral) and inplace in (0, 1):
        return bool(inplace)
    raise TypeError(f"inplace must be a bool, got {type(inplace).__name__} {inplace!r}")


def quiet_under_jit_trace(fn, *args, **kwargs):
    """fn(*args, **kwargs), without torch's TracerWarnings while torch.jit.trace runs. There a size
    is a traced value and every shape check reads it as a Python bool or int (a warning each, in
    eval mode too); the checks hold for the traced operands, and the custom op a trace records
    checks again on replay. (is_compiling first: Dynamo cannot trace the tracer query and reads
    is_compiling as True.)"""
    torch = sys.modules.get("torch")
    if torch is None or torch.compiler.is_compiling() or not torch._C._is_tracing():
        return fn(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return fn(*args, **kwargs)


def check_u64(value, name):
    """Seeds and offsets are integers in [0, 2**64)."""
    if type(value) is int and 0 <= value <= MAX_U64:  # the common case, first
        return value
    if isinstance(value, (np.generic, np.ndarray)) and value.ndim == 0:
        torch = sys.modules.get("torch")
        if torch is not None and torch.compiler.is_compiling():
            # Dynamo traces a numpy scalar as a 0-d array whose value (int(), .item()) it does not
            # specialize, and a Python int is what the seed's checks and the custom op take
            raise TypeError(f"{name}: a numpy integer cannot be read under torch.compile; pass int({name})")
        value = python_number(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__} {shown(value)}")
    value = int(value)
    if not 0 <= value <= MAX_U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {shown_number(value)}")
    return value


def check_mode(mode, name="mode"):
    if mode not in MODES:
        raise ValueError(f"{name} must be one of {MODES}, got {shown(mode)}")
    return mode


def check_shape(shape):
    """A shape: a sequence of non-negative ints (or a single int, a numpy one or a 0-d array)."""
    shape = python_number(shape)
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    # a sequence, as numpy takes (a set, a dict's keys or a generator has no order a shape could
    # take: a set {1, 8} came out as (8, 1), a review)
    if not isinstance(shape, (collections.abc.Sequence, np.ndarray)):
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__} {shown(shape)}")
    shape = tuple(shape)
    for s in shape:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
            raise TypeError(f"shape must be a sequence of ints, got {type(s).__name__} {shown(s)} in {shown(shape)}")
        if s < 0:
            raise ValueError(f"shape must be a sequence of non-negative ints, got {shown(shape)}")
        if s >= 1 << 63:  # numpy's limit per dim (an empty array may still have such a dim)
            raise ValueError(f"shape {shown(shape)} has a dim of 2**63 or more, beyond any array's")
    return tuple(int(s) for s in shape)


def train_scale(p, mode):
    """The factor kept elements are multiplied by in training: 1/(1-p) (inverted) or 1 (classic)."""
    return 1.0 if (mode == "classic" or p == 1.0) else 1.0 / (1.0 - p)


# ---- where data lives ---------------------------------------------------------------------------

def is_torch_tensor(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_simulator_array(x):
    """A device array of Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): it has no
    __cuda_array_interface__, but the simulated kernels take it like a real device array."""
    sim = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return sim is not None and isinstance(x, sim.FakeCUDAArray)


def is_fx_proxy(x):
    """x stands for a value in torch.fx symbolic tracing (a torch.fx.Proxy)."""
    fx = sys.modules.get("torch.fx")
    return fx is not None and isinstance(x, fx.Proxy)


def traced_as_leaf(module, x, fn, args, kwargs, inputs=None):
    """A fastdrop module's forward on x, a torch.fx Proxy. fx's tracer takes only torch.nn's modules
    as leaves, so the modules' own __call__ (`fastdrop.nn.leaf.FxLeaf`) records their calls as
    call_module nodes before fx runs their hooks or forward. A forward reached here anyway is the
    traced root's (fx calls the root's forward, which has no attribute path to call), or one a
    tracer calls directly: the root records fn(*args, **kwargs), the module's functional form with
    its state of the trace, as fx traces torch's root modules; marked as wrapped, so the graph's
    code keeps it a leaf function when it is traced again (unpickling a GraphModule does).
    inputs: the module call's arguments where it takes more than x (DropoutMatmul's a, b)."""
    tracer = x.tracer
    path = tracer.path_of_module(module)
    if path:
        return tracer.create_proxy("call_module", path, (x,) if inputs is None else inputs, {})
    proxy = tracer.create_proxy("call_function", fn, args, kwargs)
    proxy.node.meta["is_wrapped"] = True
    return proxy


def array_kind(x, name="x"):
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_torch_tensor(x):
        return TORCH
    if is_fx_proxy(x):  # before the duck-typed check: a Proxy answers every attribute
        raise TypeError(f"{name} is a torch.fx Proxy: fastdrop's functions run on data and cannot be "
                        f"traced symbolically. fastdrop.nn modules are traced as leaf modules; for a "
                        f"functional call, keep it out of the graph (torch.fx.wrap) or use torch.compile")
    try:
        exported = hasattr(x, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - a property that raises: check_array's read_interface names it
        exported = True
    if exported or is_simulator_array(x):
        return CUDA_ARRAY
    raise TypeError(f"{name} must be a numpy array, a torch tensor or a CUDA device array "
                    f"(__cuda_array_interface__), got {type(x).__name__}")


# torch's float32, float64, float16, bfloat16 (no torch at import): filled when fastdrop's torch ops
# register (_core), or by the first check if a tensor arrives before that
_TORCH_FLOATS = ()


def import_torch(what):
    """torch, or for a torch-only entry point without torch installed a ModuleNotFoundError that
    names the extra (the bare 'No module named torch' did not say fastdrop's numpy API works)."""
    try:
        import torch
    except ModuleNotFoundError as e:
        if e.name != "torch" and not (e.name or "").startswith("torch."):
            raise
        raise ModuleNotFoundError(f"{what} needs torch, which is not installed: pip install 'fastdrop[torch]' "
                                  f"(the numpy API works without it)", name="torch") from e
    return torch


def fill_torch_floats(torch):
    global _TORCH_FLOATS
    _TORCH_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(x, name):
    torch = sys.modules["torch"]
    if not _TORCH_FLOATS:
        fill_torch_floats(torch)
    if not x.is_nested and x.layout == torch.strided and (x.is_cpu or x.is_cuda) and \
            x.dtype in _TORCH_FLOATS:
        return  # every call passes here: cheap tensor flags, not x.device (a new object per read)
    if x.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if x.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"fastdrop runs on CPU and CUDA tensors (and meta tensors, for their shapes), got "
                         f"{name} on device {x.device}")
    if x.dtype not in _TORCH_FLOATS:
        raise TypeError(f"{name} must have a floating point dtype (float16, bfloat16, float32, float64), "
                        f"got {x.dtype}")


class InterfaceArray:
    """An object that exposes only __cuda_array_interface__, with the array attributes the checks
    and launchers read (shape, dtype) taken from its interface; numba maps it onto a device array
    when a kernel runs (`_cuda.as_device_array`), and its interface (read-only flag, strides) is
    the object's own."""

    def __init__(self, obj, name="x"):
        self.obj = obj
        cai = read_interface(obj, name)
        self.shape, self.dtype = tuple(cai["shape"]), np.dtype(cai["typestr"])

    @property
    def __cuda_array_interface__(self):
        return self.obj.__cuda_array_interface__


def read_interface(x, name):
    """x's __cuda_array_interface__, checked where fastdrop reads it (a dict with a shape of
    non-negative ints, a typestr numpy understands, a (pointer, read-only) data pair): a malformed
    one gets a TypeError/ValueError naming it, not a KeyError from inside."""
    try:
        cai = x.__cuda_array_interface__
    except Exception as e:  # noqa: BLE001 - the producer's own error, named
        raise TypeError(f"{name}.__cuda_array_interface__ raised {type(e).__name__}: {e}") from e
    if not isinstance(cai, dict) or not {"shape", "typestr", "data"} <= cai.keys():
        raise TypeError(f"{name}.__cuda_array_interface__ must be a dict with 'shape', 'typestr' and "
                        f"'data', got {str(cai)[:120]}")
    shape, data = cai["shape"], cai["data"]
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, (bool, np.bool_)) and n >= 0
            for n in shape):
        raise ValueError(f"{name}.__cuda_array_interface__ has shape {shape!r}: not a tuple of "
                         f"non-negative ints")
    try:
        np.dtype(cai["typestr"])
    except TypeError as e:
        raise TypeError(f"{name}.__cuda_array_interface__ has typestr {cai['typestr']!r}, which is "
                        f"not a dtype") from e
    if not isinstance(data, tuple) or len(data) != 2 or not isinstance(data[0], numbers.Integral):
        raise TypeError(f"{name}.__cuda_array_interface__ has data {data!r}: not a (pointer, "
                        f"read-only) pair")
    return cai


def refuse_while_tracing(x, name):
    """TypeError for a non-tensor while Dynamo traces (x already known not to be a tensor).

    Dynamo would trace numpy through torch ops and cannot trace the kernels: refused while tracing,
    so fullgraph says why; without fullgraph the frame runs eagerly (_dynamo_skip.keep_dynamo_out). Not
    is_compiling: that flag is the whole process's (other threads) and set by export too."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_dynamo_compiling():
        raise TypeError(f"{name}: inside torch.compile fastdrop's ops take torch tensors, got "
                        f"{type(x).__module__}.{type(x).__qualname__}; a call on numpy or CUDA arrays "
                        f"runs eagerly (compile without fullgraph=True, or call it outside)")


def check_array(x, name="x"):
    """(x, kind): x validated, numpy's np.matrix, non-native byte order and strides that are not
    whole elements turned into a plain native ndarray (a view, or a copy for the latter two);
    TypeError/ValueError before any work."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):  # array_kind's answer, first for tensors
        _check_tensor(x, name)
        if not torch.compiler.is_compiling() and x._is_zerotensor():  # (Dynamo cannot trace the query)
            # torch's efficient zeros (forward-mode AD's zero tangents) have no memory: data_ptr()
            # is 0 and a kernel segfaulted on it; torch's ops read them as zeros, so do the kernels,
            # on the materialized copy torch's own message points to (in place is refused: `_call`)
            return x.clone(), TORCH
        return x, TORCH
    refuse_while_tracing(x, name)
    kind = array_kind(x, name)
    if kind == NUMPY:
        if type(x) is not np.ndarray:
            if isinstance(x, np.ma.MaskedArray):  # its mask would be dropped and the masked values used
                raise TypeError(f"{name} is a numpy masked array: fastdrop's ops would use the masked "
                                f"values and drop the mask; pass {name}.filled(value) or {name}.data")
            x = np.asarray(x)  # np.matrix and other subclasses: their operators mean other things
        if x.dtype.type not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have a floating point dtype (float16, float32, float64), "
                            f"got {x.dtype}")
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        elif not strides_in_items(x):
            x = x.copy()  # the kernels index memory in elements
        return x, kind
    if not is_simulator_array(x):
        if numba.config.ENABLE_CUDASIM:  # the simulator cannot map foreign device memory
            raise TypeError(f"{name} is a {type(x).__name__} with __cuda_array_interface__, which Numba's "
                            f"CUDA simulator cannot map; pass a numba device array (cuda.to_device)")
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            x = InterfaceArray(x, name)
        cai = read_interface(x, name)
        if cai["data"][0] == 0 and math.prod(cai["shape"]) > 0:  # a kernel would fault on it, and
            # a fault on a GPU ends the process's CUDA context (every later launch fails)
            raise ValueError(f"{name}'s __cuda_array_interface__ has a null data pointer for "
                             f"shape {tuple(cai['shape'])}")
    elif isinstance(getattr(x, "_ary", None), np.matrix):
        # the simulator's to_device keeps an ndarray subclass, and np.matrix's reshape stays 2-d:
        # the simulated kernels indexed past it with an IndexError, after the seed draw (a memmap
        # is fine; a GPU's device array holds plain memory)
        raise TypeError(f"{name} is a CUDA-simulator array holding a {type(x._ary).__name__}, not "
                        f"a plain ndarray; pass cuda.to_device(np.asarray(...))")
    dtype = np.dtype(x.dtype)
    if dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating point dtype (float16, float32, float64), got {dtype}")
    return x, kind


def check_device_byte_order(arrays, names=("x", "an operand")):
    """TypeError for a CUDA device array in non-native byte order among arrays (x first), asked
    where a kernel would run on them (an op that returns x untouched, at eval or p = 0, takes any):
    numba cannot type such an array, so a GPU's launch failed inside Numba after the seed draw,
    and the simulator ran it and wrote an in-place call byte-swapped."""
    for a in arrays:
        if a is not None and not np.dtype(a.dtype).isnative:
            name = names[0] if a is arrays[0] else names[1]
            raise TypeError(f"{name} is a CUDA device array in non-native byte order ({np.dtype(a.dtype).str}); "
                            f"device memory has no byte-order conversion here: convert it before copying it "
                            f"to the device (np.asarray(a, a.dtype.newbyteorder('=')))")


def strides_in_items(a):
    """Every stride of numpy array a is a whole number of elements (a field of a packed structured
    array, e.g. the float64 of an f4 + f8 record, steps 12 bytes: not)."""
    item = a.itemsize
    return all(st % item == 0 for st, n in zip(a.strides, a.shape) if n > 1)


def check_companions(x, kind, others, first="x", dtypes=None):
    """Companion operands [(name, array or None)] of x (weight, bias, b): same kind, device and
    dtype as x (dtypes: a set of dtypes they may take instead, the mixed half / float32 operands
    autocast casts in its GEMMs); returned converted as check_array converts x."""
    out = []
    for name, a in others:
        if a is not None:
            if array_kind(a, name) != kind:
                raise TypeError(f"{first} is a {kind} array but {name} is a {array_kind(a, name)} array; "
                                f"pass both as the same kind")
            if kind == TORCH and a.device != x.device:
                raise ValueError(f"{first} is on {x.device} but {name} is on {a.device}")
            a, _ = check_array(a, name)
            if a.dtype != x.dtype and (dtypes is None or a.dtype not in dtypes):
                if kind == CUDA_ARRAY:  # float32 against >f4: the byte order's own error, not a dtype one
                    check_device_byte_order([x, a], (first, name))
                raise TypeError(f"{first} and {name} must have the same dtype, got {x.dtype} and {a.dtype}")
        out.append(a)
    return out


# ---- in-place writes ----------------------------------------------------------------------------

def _overlaps(shape, strides, itemsize):
    """True when two elements of a view with these shape/strides (in bytes) share memory."""
    dims = sorted((abs(st), n) for n, st in zip(shape, strides) if n > 1)
    if any(n == 0 for n in shape) or not dims:
        return False
    span = itemsize
    for st, n in dims:
        if st < span:
            break
        span = st * (n - 1) + span
    else:
        return False  # nested strides: each dimension steps past everything inside it
    if dims[0][0] == 0:
        return True
    # An interleaved layout the quick rule cannot decide: compare the element addresses.
    addr = np.zeros(1, np.int64)
    for st, n in dims:
        addr = (addr[:, None] + st * np.arange(n, dtype=np.int64)[None, :]).reshape(-1)
    addr.sort()
    return bool(np.any(np.diff(addr) < itemsize))


def check_writable(x, kind, name="x"):
    """An in-place or out= target must be writeable and must not have two elements in one memory
    location (torch's rule: `expand`ed and overlapping `as_strided` views are refused with a
    RuntimeError)."""
    # what writes into it: inplace=True (x), out=, or max_norm_ (its weight)
    what = "inplace=True" if name == "x" else "out=" if name == "out" else "max_norm_"
    if kind == NUMPY:
        if not x.flags.writeable:
            raise ValueError(f"{what} needs a writeable array; {name} is read-only")
        shape, strides, item = x.shape, x.strides, x.itemsize
    elif kind == TORCH:
        torch = sys.modules["torch"]
        if traced(torch, x):
            # A traced graph writes through torch's own ops (the functional op, then copy_ into x),
            # which accept other overlapping layouts as torch's own traced in-place dropout does
            # (an as_strided view whose rows overlap); and the Python checks below would put guards
            # on symbolic strides (sorting them breaks the graph under dynamic shapes). Asked of x,
            # not only of is_compiling: that flag is the whole process's, so an eager call in
            # another thread while a graph compiles is still checked. But a dim of stride 0 (an
            # expanded x) is refused here: the float in-place write (fill_ + add_) is not refused
            # by torch's traced ops, and such an x was written with the sum of its aliases (a
            # review). (A dynamic dim's size is known >= 2 and its stride >= 1: no guard added.)
            if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride())):
                _refuse_overlap(what, name)
            return
        if x.is_neg():
            raise ValueError(f"{name} is a lazily negated view (torch's neg bit): fastdrop writes "
                             f"memory directly; pass {name}.resolve_neg()")
        if x._is_zerotensor():
            raise RuntimeError(f"ZeroTensors are immutable (torch's rule): {what} needs a tensor with "
                               f"memory; pass {name}.clone()")
        if x.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError(f"Inplace update to inference tensor outside InferenceMode is not "
                               f"allowed ({name} was made under torch.inference_mode)")
        if x.is_contiguous():  # (the common case, ~3 us of the general rule saved)
            return
        item = x.element_size()
        shape, strides = tuple(x.shape), tuple(s * item for s in x.stride())
    else:
        cai = getattr(x, "__cuda_array_interface__", None)
        if cai is None:  # the simulator's arrays export no interface (and are never read-only)
            shape, strides, item = tuple(x.shape), tuple(x.strides), x.dtype.itemsize
        elif cai["data"][1]:
            raise ValueError(f"{what} needs a writeable array; {name}'s __cuda_array_interface__ "
                             f"marks it read-only")
        elif cai.get("strides") is None:  # C-contiguous
            return
        else:
            shape, strides, item = tuple(cai["shape"]), tuple(cai["strides"]), np.dtype(cai["typestr"]).itemsize
    if _overlaps(shape, strides, item):
        _refuse_overlap(what, name)


def _refuse_overlap(what, name):
    raise RuntimeError(f"unsupported operation: more than one element of the written-to tensor "
                       f"refers to a single memory location. Please clone() the tensor before "
                       f"performing the operation ({what} on an overlapping view: {name}).")


def traced(torch, *tensors):
    """Are these tensors being traced (Dynamo, a FakeTensorMode, or fake tensors, possibly
    functional around a fake: non-strict export, AOT tracing) rather than tensors with memory?
    is_compiling alone is the whole process's flag (set while another thread compiles), so it is
    asked of the tensors."""
    # a FakeTensorMode on this thread: its tensors (and a real tensor's detach() there) are fake
    return torch.compiler.is_dynamo_compiling() or \
        torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None or (
            torch.compiler.is_compiling() and any(torch._subclasses.fake_tensor.is_fake(t) for t in tensors))


_OUT_AUTOGRAD = ("functions with out=... arguments don't support automatic differentiation, but one "
                 "of the arguments (x or out) requires grad (as torch's out= ops)")


def check_out_is_x(x, kind, inplace):
    """out=x: the in-place call it stands for, with out='s own rules (not with inplace=True, no
    autograd to record)."""
    if inplace:
        raise ValueError("pass either inplace=True or out=, not both")
    if kind == TORCH and x.requires_grad and sys.modules["torch"].is_grad_enabled():
        raise RuntimeError(_OUT_AUTOGRAD)


# numpy types fastdrop writes results into (out=, max_norm_'s weight, dropout_mask's out): a memmap
# indexes, reshapes and passes to the kernels as a plain array does, and writes through to its file
WRITABLE_NUMPY = (np.ndarray, np.memmap)


def check_out(x, kind, out, inplace, given=None):
    """An `out=` target: the kind, shape, dtype and device of x, writable, not overlapping itself,
    sharing no memory with x (out=x is inplace=True), and no autograd to record (torch's rule for
    out= ops). given: the x the caller passed, where x may be a converted copy of it."""
    if inplace:
        raise ValueError("pass either inplace=True or out=, not both")
    if kind == CUDA_ARRAY:
        raise TypeError("out= takes numpy arrays and torch tensors; CUDA device arrays: use inplace=True")
    if array_kind(out, "out") != kind:
        raise TypeError(f"out must be the same kind of array as x ({kind}), got {type(out).__name__}")
    if kind == TORCH:
        _check_tensor(out, "out")  # sparse, nested, mkldnn, other devices: the messages x gets
    if kind == NUMPY:
        if type(out) not in WRITABLE_NUMPY:
            raise TypeError(f"out must be a numpy.ndarray or np.memmap, got {type(out).__name__} (np.matrix, "
                            f"masked arrays and other subclasses index and reshape differently)")
        if not out.dtype.isnative:
            raise TypeError(f"out must be in the machine's byte order, got dtype {out.dtype.str}")
        if not strides_in_items(out):
            raise TypeError(f"out's strides {out.strides} are not whole multiples of its itemsize "
                            f"{out.itemsize} (a field of a packed structured array): pass a plain array")
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected x's shape {tuple(x.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected x's dtype {x.dtype}")
    if kind == TORCH:
        if out.device != x.device:
            raise ValueError(f"out is on {out.device} but x is on {x.device}")
        torch = sys.modules["torch"]
        if (x.requires_grad or out.requires_grad) and torch.is_grad_enabled():
            raise RuntimeError(_OUT_AUTOGRAD)
        if not traced(torch, x, out) and not x.is_meta:  # (meta: shapes only, no memory)
            # (a wrapper subclass or a fake tensor has address 0: refused here, before the seed
            # draw and before its span could pass the overlap check as disjoint from x)
            check_plain_memory(out, "out")
            check_storage(out, "out")
            if _tensors_overlap(x, out):
                raise ValueError("out shares memory with x: pass inplace=True to write into x")
    elif np.shares_memory(out, x) or given is not x and isinstance(given, np.ndarray) and np.shares_memory(out, given):
        # (given: the caller's array, when x is a converted copy of it, a big-endian or packed
        # one: out over the caller's memory is the aliasing the rule refuses, a review)
        raise ValueError("out shares memory with x: pass inplace=True to write into x")
    check_writable(out, kind, "out")


def _tensors_overlap(a, b):
    """Do two tensors share a byte of memory (whatever storages they come from)? Exact for CPU
    tensors (disjoint spans, two contiguous spans that meet, else numpy's shares_memory on their
    views); the spans of their memory for CUDA tensors."""
    if a.numel() == 0 or b.numel() == 0:
        return False

    def span(t):
        lo = hi = t.data_ptr()
        for size, stride in zip(t.shape, t.stride()):
            step = (size - 1) * stride * t.element_size()
            lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
        return lo, hi + t.element_size()
    (alo, ahi), (blo, bhi) = span(a), span(b)
    if not (alo < bhi and blo < ahi):
        return False
    if a.is_cpu and b.is_cpu and not (a.is_contiguous() and b.is_contiguous()):
        # spans that meet with gaps in them (strided views of one buffer) may still share nothing
        return bool(np.shares_memory(_memory_of(a), _memory_of(b)))
    return True  # contiguous memory covers its whole span


def _memory_of(t):
    """A numpy array of opaque items over CPU tensor t's memory (its shape and strides), for
    questions about the memory only: any dtype, a negative or conjugate bit (a lazily negated
    view is memory like any other: a review found one refused as overlapping a disjoint out)."""
    memory = _TensorMemory()
    memory.tensor = t
    item = t.element_size()
    # without t's size-1 dims, which address nothing: torch allows more dims than numpy's 64, and
    # any stride on them (2**61 overflowed numpy's byte strides; a review)
    dims = [(n, s * item) for n, s in zip(t.shape, t.stride()) if n != 1]
    memory.__array_interface__ = {"shape": tuple([n for n, _ in dims]), "typestr": f"|V{item}",
                                  "data": (t.data_ptr(), True), "strides": tuple([s for _, s in dims]),
                                  "version": 3}
    return np.asarray(memory)


def check_plain_memory(t, name="x"):
    """TypeError for a tensor whose memory fastdrop cannot reach: a tensor-subclass-like tensor
    (a __torch_dispatch__ wrapper such as a two-tensor subclass or DTensor, a fake tensor outside
    its mode), whose data_ptr() is 0 or not its values; the kernels would write there (a
    segfault) where torch's ops dispatch to the subclass. torch's own `.numpy()` refuses the same
    tensors."""
    if is_subclass_like(t):
        raise TypeError(f"{name} is a {type(t).__name__}, a tensor subclass whose data fastdrop's kernels "
                        f"cannot reach (a __torch_dispatch__ wrapper, a fake tensor or a functionalization "
                        f"wrapper): fastdrop reads and writes tensor memory directly; pass a plain tensor")


def check_storage(t, name="x"):
    """ValueError for a CPU or CUDA tensor whose storage does not hold all its elements: a storage
    resized to 0 bytes (FSDP frees a parameter's unsharded storage so between its uses), or cut
    short by `untyped_storage().resize_()`. The kernels would read and write past the memory's
    end (a segfault, or another allocation's bytes); torch's own ops segfault or read garbage
    there. About 0.4 us (contiguous). A tensor without a storage of its own (torch's legacy vmap
    BatchedTensor, whose values torch's ops read) passes: its callers unwrap functorch's."""
    try:
        have = t.untyped_storage().nbytes()
    except NotImplementedError:
        return
    if t.is_contiguous():
        need = t.nbytes and t.nbytes + t.storage_offset() * t.element_size()  # (empty: none)
    else:  # the last element's offset, plus one (torch has no negative strides)
        need = 0 if not t.numel() else \
            (t.storage_offset() + 1 + sum([(s - 1) * st for s, st in zip(t.shape, t.stride())])) * t.element_size()
    if have < need:
        raise ValueError(f"{name} has no memory for its elements: its storage holds {have} bytes where its "
                         f"shape {tuple(t.shape)} and strides {t.stride()} need {need} (a storage freed by "
                         f"resize_(0), as FSDP frees unsharded parameters, or cut short by resize_)")


def is_subclass_like(t):
    """Is t a tensor whose memory is not its values (check_plain_memory)? torch's own query,
    asked again with Python dispatch off when it says yes: while any TorchDispatchMode is active
    on the thread (FlopCounterMode, selective activation checkpointing, a debug or memory-tracking
    mode) it says yes for every tensor, and plain tensors were refused."""
    C = sys.modules["torch"]._C
    if not C._dispatch_isTensorSubclassLike(t):
        return False
    with C._DisableTorchDispatch():  # the mode off; the tensor's own dispatch keys still count
        return C._dispatch_isTensorSubclassLike(t)


class _TensorMemory:
    """A CPU tensor's memory offered to numpy through the array interface (`numpy_view`); the
    array numpy makes keeps this object, and so the tensor, alive as its base."""
    __slots__ = ("__array_interface__", "tensor")


_TYPESTRS = {}  # torch dtype -> (numpy typestr, itemsize, bf16 flag), filled on first use


def _typestr(dtype):
    torch = sys.modules["torch"]
    if dtype == torch.bfloat16:  # no numpy type: its bits, as uint16
        entry = ("<u2", 2, True)
    else:
        C = torch._C  # (a throwaway tensor's numpy dtype; made past the thread's modes, which
        with C._DisableTorchDispatch(), C.DisableTorchFunction():  # could hand back a wrapper)
            d = np.dtype(torch.empty((), dtype=dtype, device="cpu").numpy().dtype)
        entry = (d.str, d.itemsize, False)
    _TYPESTRS[dtype] = entry
    return entry


def numpy_view(t):
    """(numpy array over CPU tensor t's memory with t's shape and strides, bf16 flag): bfloat16 has
    no numpy type and travels as uint16. Not `Tensor.numpy()`: torch marks a storage it has lent
    to numpy as not resizable, for good, so every tensor a call touched (the user's input, out=,
    the output) could no longer be `resize_`d; the kernels use the view only during the call.
    t must be a plain CPU tensor without grad, negative or conjugate bit (the callers detach and
    resolve; the bits are checked, a view would read the unresolved values). About 1.4 us
    (contiguous) against 0.55 for `.numpy()`: the hot paths take addresses instead. A tensor of
    more than numpy's 64 dims is viewed without its size-1 dims (`squeeze_past_numpy`)."""
    check_plain_memory(t)
    if t.is_neg() or t.is_conj() or t.requires_grad:
        raise RuntimeError("fastdrop internal error: numpy_view of a tensor with a negative or conjugate "
                           "bit, or that requires grad")
    typestr, itemsize, bf16 = _TYPESTRS.get(t.dtype) or _typestr(t.dtype)
    if t.dim() > 64:  # torch allows more dims than numpy: the view without t's size-1 dims
        t = squeeze_past_numpy(t)[0]  # (same elements in the same C order; callers that index dims
        # squeeze first)
    memory = _TensorMemory()
    memory.tensor = t
    # None: C order; a size-1 dim's stride addresses nothing and may be any size (2**61 overflowed
    # numpy's byte strides: a review), so it is 0 here
    strides = None if t.is_contiguous() else tuple([s * itemsize if n != 1 else 0 for n, s in zip(t.shape, t.stride())])
    memory.__array_interface__ = {"shape": t.shape, "typestr": typestr, "data": (t.data_ptr(), False),
                                  "strides": strides, "version": 3}
    return np.asarray(memory), bf16


def squeeze_past_numpy(t, marked=()):
    """(t, marked) for a tensor of at most numpy's 64 dims; for more (torch allows them), a view of
    t's memory without its size-1 dims, and `marked` (dims that mean something to the caller: a
    grouped op's leading group dims, max_norm_'s normed dims) renumbered to match. The marked dims
    and the rest each keep one dim, so neither part becomes empty. The elements and their C order
    do not change, so neither does the mask of the logical index, which group an element is in,
    or which vector max_norm_ scales it with (for an output: its writes are t's)."""
    nd = t.dim()
    if nd <= 64:
        return t, marked
    inside = [d for d in marked if t.shape[d] != 1] or list(marked)[:1]
    rest = [d for d in range(nd) if d not in marked]
    keep = sorted(inside + ([d for d in rest if t.shape[d] != 1] or rest[:1]))
    # (torch's squeeze of a dims tuple takes at most 64 dims itself)
    view = t.as_strided([t.shape[d] for d in keep], [t.stride(d) for d in keep], t.storage_offset())
    return view, [keep.index(d) for d in inside]


def announce_write(torch, t):
    """Before a kernel writes CPU/CUDA tensor t's memory behind torch's back, while a dispatch mode
    is active: show the modes the write as torch's own in-place op (a copy of t onto itself, which
    ATen returns from at once), so a mode that acts on writes sees it.
    `torch.autograd.graph.allow_mutation_on_saved_tensors` clones a tensor saved for backward
    there, before it changes; without this its backward read the written values, silently (its
    version checks are off). Below autograd and the version counter: the write's own bump follows.
    Not for an inference tensor, which no graph saves (and whose copy_ raises under such a mode)."""
    if torch._C._len_torch_dispatch_stack() and not t.is_inference():
        with torch._C._AutoDispatchBelowADInplaceOrView():
            t.copy_(t)


def mark_written(t):
    """t after a kernel wrote into its memory behind torch's back (numpy or device views): its
    version counter bumped, as torch's in-place and out= ops do, so a graph that saved t for
    backward refuses to use the changed values instead of computing a wrong gradient."""
    if not t.is_inference():
        sys.modules["torch"].autograd.graph.increment_version(t)
    return t
