"""Keeping Dynamo out of fastdrop's internal frames.

When Dynamo gives up on a frame it compiles every function that frame calls as a frame of its
own; fastdrop's eager internals (numpy scalars, Numba dispatchers) cannot be traced that way, so
their code objects are marked to run as plain Python (`keep_dynamo_out`). Inlining into a compiled
graph ignores the mark, so compiled graphs are unchanged.
"""
import sys


MARKED = set()  # modules whose code is marked


def keep_dynamo_out():
    """Mark fastdrop's internal code so that Dynamo never compiles one of its frames on its own.

    Under torch.compile Dynamo inlines fastdrop's Python into the caller's graph, where its tensor
    route is the custom ops. But when Dynamo gives up on a frame (an exception while tracing, such
    as a refusal of forward-mode AD, or a graph break it cannot resume, such as a numpy array), it
    runs that frame eagerly and compiles every function the frame calls as a frame of its own:
    fastdrop's eager internals, whose numpy scalars and Numba dispatchers it cannot trace
    (InternalTorchDynamoError). A frame of marked code runs as plain Python, with every frame it
    calls (the strategy torch.compiler.disable sets, without its wrapper: nothing on the eager
    path). Inlining ignores the mark, so compiled graphs are unchanged. Public functions and
    module classes stay unmarked: `torch.compile(fastdrop.dropout)` compiles them. Marked: the
    code of fastdrop's private modules and kernels, and the private (_-named) functions of the
    public modules. Runs when torch's ops register and when fastdrop.nn loads; a torch
    without the strategy API is left alone."""
    eval_frame = _eval_frame()
    if eval_frame is None:
        return
    skip = eval_frame._FrameExecStrategy(eval_frame._FrameAction.SKIP, eval_frame._FrameAction.SKIP)
    for name, module in list(sys.modules.items()):
        if module is None or name in MARKED or not (name == "fastdrop" or name.startswith("fastdrop.")):
            continue
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue  # still importing (torch's import hook runs from inside it): marked on a later run
        MARKED.add(name)
        # public: no _-named part and not the kernels (fastdrop.functional, fastdrop.nn.dropout, ...)
        public = not name.startswith("fastdrop.kernels") and not any(
            part.startswith("_") for part in name.split("."))
        for attr, value in vars(module).items():
            if getattr(value, "__module__", None) != name:
                continue  # imported from elsewhere: marked (or not) with its own module
            if public and (not attr.startswith("_") or isinstance(value, type)):
                continue  # a public function, or a module's class: torch.compile/export may start there
            for code in _code_objects(value):
                eval_frame.set_code_exec_strategy(code, skip)


def compile_callees_only(function):
    """Dynamo runs function's own frame as plain Python and compiles the frames it calls, as it
    treats torch.nn.Module.__call__: `torch.compile(module)` starts at the module's __call__, and
    a compiled __call__ shared by every module class would recompile per module instance (its
    guards name the instance) up to Dynamo's limit, where torch's own modules compile their
    forward. Inlining ignores the mark, as above."""
    eval_frame = _eval_frame()
    if eval_frame is not None:
        action = eval_frame._FrameAction
        eval_frame.set_code_exec_strategy(function.__code__,
                                          eval_frame._FrameExecStrategy(action.SKIP, action.DEFAULT))
    return function


def _eval_frame():
    """torch's per-code frame strategy API (torch._C._dynamo.eval_frame), or None for a torch
    without it (the marks are then left out)."""
    eval_frame = getattr(getattr(sys.modules["torch"]._C, "_dynamo", None), "eval_frame", None)
    if getattr(eval_frame, "_FrameAction", None) is None or not hasattr(eval_frame, "set_code_exec_strategy"):
        return None
    return eval_frame


def _code_objects(value, seen=None):
    """The code objects of a function (with the functions and classes it defines inside), a
    class's methods (properties' accessors included), or a Numba dispatcher's Python function."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        for f in (value.fget, value.fset, value.fdel):
            if f is not None:
                yield from _code_objects(f, seen)
        return
    if isinstance(value, type):
        for member in vars(value).values():
            yield from _code_objects(member, seen)
        return
    code = getattr(value, "__code__", None) or getattr(getattr(value, "py_func", None), "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if hasattr(c, "co_consts"))
