"""fastdrop.nn.convert: swap a model's dropout layers for fastdrop's, in place.

What every user moving a real model writes by hand, in the spirit of
`torch.nn.SyncBatchNorm.convert_sync_batchnorm`. timm and torchvision are recognised by class name,
module and attributes, never imported (neither is a dependency).
"""
import sys
import weakref

import torch

from .drop_path import DropPath, StochasticDepth
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d

# Exact types only: a user's subclass of nn.Dropout may override forward, which a swap would lose.
_TORCH_TO_FASTDROP = {torch.nn.Dropout: Dropout, torch.nn.Dropout1d: Dropout1d,
                      torch.nn.Dropout2d: Dropout2d, torch.nn.Dropout3d: Dropout3d}


def is_timm_drop_path(m):
    """timm's DropPath (timm.layers.drop / timm.models.layers), recognised without importing timm."""
    cls = type(m)
    return (cls.__name__ == "DropPath" and cls.__module__.startswith("timm")
            and hasattr(m, "drop_prob") and hasattr(m, "scale_by_keep"))


def is_torchvision_stochastic_depth(m):
    """torchvision.ops.StochasticDepth, recognised without importing torchvision."""
    cls = type(m)
    return (cls.__name__ == "StochasticDepth" and cls.__module__.startswith("torchvision")
            and hasattr(m, "p") and hasattr(m, "mode"))


def _prob(p):
    """A probability as the module held it: a 0-d tensor (which torch's and timm's modules accept,
    e.g. a drop-path rate taken from torch.linspace) as its float; anything else as it is (the
    fastdrop constructor checks it)."""
    return p.item() if isinstance(p, torch.Tensor) and p.dim() == 0 else p


def _replaceable(m):
    return type(m) in _TORCH_TO_FASTDROP or is_timm_drop_path(m) or is_torchvision_stochastic_depth(m)


def _replacement(m):
    """fastdrop's module for m with the same probability, flags and mode, or None to keep m."""
    cls = _TORCH_TO_FASTDROP.get(type(m))
    if cls is not None:
        return cls(_prob(m.p), inplace=bool(m.inplace))  # (torch reads its truth: inplace=0 works there)
    if is_timm_drop_path(m):
        return DropPath(_prob(m.drop_prob), scale_by_keep=bool(m.scale_by_keep))
    if is_torchvision_stochastic_depth(m):
        return StochasticDepth(_prob(m.p), m.mode)
    return None


def convert(model):
    """Replace, in place, torch's and timm's / torchvision's dropout layers by fastdrop's.

    Replaced: `torch.nn.Dropout`, `Dropout1d`, `Dropout2d`, `Dropout3d` (exact classes, not user
    subclasses, whose forward may differ) by `fastdrop.nn.Dropout*` with the same `p` and `inplace`;
    timm's `DropPath(drop_prob, scale_by_keep)` by `fastdrop.nn.DropPath` and torchvision's
    `StochasticDepth(p, mode)` by `fastdrop.nn.StochasticDepth` (DropPath with torchvision's
    signatures) with the same probability, `scale_by_keep` and mode. Every new module
    takes its predecessor's training flag. Not replaced: `AlphaDropout` and `FeatureAlphaDropout`
    (SELU dropout: fastdrop has no kernel for it), modules that are already fastdrop's, and
    anything else. Dropout layers hold no parameters or buffers, so the `state_dict` is unchanged,
    and the eval outputs are unchanged. A module reachable under several names is replaced by one
    shared fastdrop module. Hooks registered on a replaced module (forward, pre-forward, backward,
    state-dict) move to its replacement (the old module keeps none), and their handles still
    remove them; other attributes a user set on it are not carried. Dropout inside other layers, as a float
    (`nn.MultiheadAttention(dropout=...)`, stacked `nn.RNN` / `LSTM` / `GRU`) or a call to
    `F.dropout` in a forward, is not a module and stays torch's.

    A dropout layer inside a `torch.jit.script` / `torch.jit.trace` module is refused (TypeError):
    the module's compiled code would keep running torch's layer; convert before scripting or
    tracing. A drop-path schedule that
    finds its layers by timm's or torchvision's class must look for `fastdrop.nn.DropPath` after
    the swap (or be set up before it).

    Args:
        model: a torch.nn.Module.
    Returns:
        the model, modified in place; if `model` itself is such a dropout layer, its replacement.
    Example:
        >>> model = fastdrop.nn.convert(timm.create_model("vit_small_patch16_224", drop_path_rate=0.1))
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _refuse_scripted_layers(model)
    _refuse_compiled_layers(model)  # before anything is replaced
    return _convert(model, {})


def _refuse_compiled_layers(model):
    """A dropout layer compiled on its own (`torch.compile(nn.Dropout(p))`) sits in a wrapper whose
    forward is bound to it: replacing the wrapper's `_orig_mod` would leave torch's layer running,
    silently. A compiled block or model that contains the layer converts as any other."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # (not loaded: nothing was compiled)
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    if wrapper is None:
        return
    for name, m in model.named_modules(prefix="model"):
        if isinstance(m, wrapper) and _replaceable(m._orig_mod):
            raise TypeError(f"fastdrop.nn.convert: {name} is a {type(m._orig_mod).__name__} compiled on its "
                            f"own (torch.compile), whose compiled forward would keep running torch's layer; "
                            f"convert before compiling: torch.compile(fastdrop.nn.convert(model))")


def _scripted_replaceable(s):
    """A module of a torch.jit.script / trace whose Python class was one `convert` replaces, read
    from its TorchScript type's qualified name (`__torch__.<module>.<class>`, with torch's
    `___torch_mangle_N` parts when a class was scripted twice)."""
    try:
        qualified = s._c._type().qualified_name()
    except AttributeError:
        return False
    *module, cls = [part for part in qualified.split(".")[1:] if not part.startswith("___torch_mangle")]
    module = ".".join(module)
    return (module == "torch.nn.modules.dropout" and cls in {c.__name__ for c in _TORCH_TO_FASTDROP}
            or module.startswith("timm") and cls == "DropPath"
            or module.startswith("torchvision") and cls == "StochasticDepth")


def _refuse_scripted_layers(model):
    """A dropout layer inside a `torch.jit.script` / `trace` module runs from the module's
    compiled code, whatever its Python attributes say: a swap there would change nothing, silently
    (a review). Refused before anything is replaced."""
    for name, m in model.named_modules(prefix="model"):
        if isinstance(m, torch.jit.ScriptModule):  # (a traced module is one too)
            inner = [n for n, s in m.named_modules(prefix=name) if _scripted_replaceable(s)]
            if inner:
                raise TypeError(f"fastdrop.nn.convert: {inner[0]} is a dropout layer inside "
                                f"{name}, a {type(m).__name__} (torch.jit.script / trace), whose compiled "
                                f"code would keep running torch's layer; convert before scripting or "
                                f"tracing: torch.jit.script(fastdrop.nn.convert(model))")


def _carry_hooks(old, new):
    """The hooks registered on old (forward, pre-forward, backward, state-dict) move to new: old's
    non-empty hook dicts become new's, the same objects, so the handles the user holds still
    remove them, and old gets empty ones (no hook registered later on either module fires on the
    other). A forward hook that rewrites the layer's output would otherwise be lost, and the eval
    outputs change (a review). A hook torch stored with its module (a load_state_dict pre-hook)
    is given new, not the old layer, which may be gone by the time it runs."""
    for name, value in list(vars(old).items()):
        if "hook" not in name or name not in vars(new) or not isinstance(value, dict) or not value:
            continue
        if getattr(new, name):
            raise RuntimeError(f"fastdrop.nn.convert: {type(new).__name__} has its own {name}")  # (none has)
        for hook in value.values():
            if getattr(hook, "with_module", False) and isinstance(getattr(hook, "module", None), weakref.ref):
                hook.module = weakref.ref(new)
        setattr(new, name, value)
        setattr(old, name, type(value)())
    new._is_full_backward_hook = old._is_full_backward_hook


def _convert(m, done):
    if id(m) in done:
        return done[id(m)]
    new = _replacement(m)
    if new is None:
        new = m
        # _modules, not named_children(): that skips a child registered a second time under another name
        for name, child in list(m._modules.items()):
            if child is not None:
                converted = _convert(child, done)
                if converted is not child:
                    setattr(m, name, converted)
    else:
        new.train(m.training)
        _carry_hooks(m, new)
    done[id(m)] = new
    return new
