"""torch.fx leaves: fastdrop's modules are recorded as call_module nodes, as torch.nn's are."""
import torch

from .._checks import is_fx_proxy
from .._dynamo_skip import compile_callees_only


class FxLeaf:
    """Mixin of every fastdrop module. fx's default tracer takes only torch.nn's modules as leaves:
    it traced through fastdrop's, running their forward hooks on Proxies and recording what the
    hooks computed, so the graph ran them twice (once as recorded, once in the module's call) and
    hooks with side effects or backward hooks ran at trace time only. Here a call on a Proxy goes
    to the tracer's call_module with a call_module node as its "forward", before the hooks see
    it: the graph calls the module at run time, hooks and train / eval mode included, as it calls
    torch's nn.Dropout. Every other call is torch.nn.Module's (looked up per call: fx and Dynamo
    patch it). A public module, so `keep_dynamo_out` leaves this __call__ alone (its mark would
    run the forward of `torch.compile(module)` as plain Python, with all it calls); Dynamo compiles
    the frames it calls instead, the modules' forward, as it does for torch's modules
    (`compile_callees_only`)."""

    @compile_callees_only
    def __call__(self, *args, **kwargs):
        if (args and type(args[0]) is _TENSOR) or not _traced(args, kwargs):
            return _MODULE.__call__(self, *args, **kwargs)
        # through the tracer's call_module (its scope and a subclass's bookkeeping, such as
        # torchvision's feature-extraction names), with the leaf node as its "forward"
        tracer = next(a for a in (*args, *kwargs.values()) if is_fx_proxy(a)).tracer
        path = tracer.path_of_module(self)
        if type(self).__call__ is FxLeaf.__call__:
            leaf = lambda *a, **k: tracer.create_proxy("call_module", path, a, k)  # noqa: E731
        else:
            # a subclass's own __call__ wraps this one, and fx records what it adds: the node
            # calls the module without it (hooks and mode still at run time), or it would run twice
            def leaf(*a, **k):
                proxy = tracer.create_proxy("call_function", module_call,
                                            (tracer.create_proxy("get_attr", path, (), {}), *a), k)
                proxy.node.meta["is_wrapped"] = True  # kept a call when the graph is traced again
                return proxy
        return tracer.call_module(self, leaf, args, kwargs)


def _traced(args, kwargs):
    """Is any argument a torch.fx Proxy? (a call may pass its tensor by keyword, or not first)"""
    return any(type(a) is not _TENSOR and is_fx_proxy(a) for a in (*args, *kwargs.values()))


def module_call(module, *args, **kwargs):
    """A traced graph's call of a fastdrop module whose class overrides __call__: torch.nn.Module's
    call (hooks, forward), without the override the trace already recorded."""
    return _MODULE.__call__(module, *args, **kwargs)


_TENSOR, _MODULE = torch.Tensor, torch.nn.Module  # (a module call's cost is counted in microseconds)
