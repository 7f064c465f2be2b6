"""pytest plugin for the NUMBA_BOUNDSCHECK=1 pass of scripts/test.sh (loaded with -p).

Numba ignores boundscheck inside the prange loops of parallel=True functions (checked with
numba 0.68.1: a parallel kernel reading past its array returns garbage even with
NUMBA_BOUNDSCHECK=1, the same code with parallel=False raises IndexError). So in this pass
fastdrop's kernels are compiled serial (prange runs as range; same results by construction, the
mask is a pure function of the element index), which makes every index bounds-checked. The
patch must be in place before fastdrop is imported: the kernels are compiled at import.
The pass needs its own NUMBA_CACHE_DIR: the on-disk cache is not keyed on boundscheck/parallel.
kernels.config.cpu_kernel looks `numba.njit` up when it decorates, so the patch reaches the
parallel variant of every CpuKernel (the one a call runs, and the one counted below); their serial
twins (for forked children) are parallel=False already and pass through unchanged.
"""
import functools

import numba

_njit = numba.njit


_patched = []  # the kernels compiled serial, reported at the end if the pass never ran them


@functools.wraps(_njit)
def _serial_njit(*args, **kwargs):
    if not kwargs.get("parallel"):
        return _njit(*args, **kwargs)
    kwargs["parallel"] = False
    decorate = _njit(**kwargs)

    def wrap(fn):
        dispatcher = decorate(fn)
        _patched.append(dispatcher)
        return dispatcher
    return wrap(args[0]) if args else wrap


if numba.config.BOUNDSCHECK:
    numba.njit = _serial_njit


def pytest_report_header(config):
    state = "on, kernels compiled serial" if numba.config.BOUNDSCHECK else "off"
    return f"fastdrop: Numba boundscheck {state}"


def pytest_terminal_summary(terminalreporter):
    if not numba.config.BOUNDSCHECK:
        return
    unused = [f"{d.py_func.__module__}.{d.py_func.__name__}" for d in _patched if not d.signatures]
    terminalreporter.write_line(f"fastdrop boundscheck pass: {len(_patched) - len(unused)} of "
                                f"{len(_patched)} parallel kernels ran bounds-checked"
                                + (f"; never called: {', '.join(unused)}" if unused else ""))
