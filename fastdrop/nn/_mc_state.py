"""Which mc_predict call, if any, drives the fastdrop modules a thread runs (fastdrop/nn/mc.py).

mc_predict does not change the model: no module is switched to training and no forward is
replaced. It installs a sampler for its own thread; the forward of each fastdrop stochastic module
asks whether its thread has one (`thread.sampler`, None outside an mc_predict call) and, if so,
hands its input to it (`sample`) instead of its op. Other threads running the same model (eval
forwards, other mc_predict calls) see their own sampler or none, so they are not affected.

The question is thread-local on purpose, for torch.compile too: Dynamo guards a compiled module
on what its forward read. It read a process-wide count of running mc_predict calls until
2026-12-06, so a compiled model recompiled whenever another thread started or ended one (the
recompile limit then failed `fullgraph=True`), and a count that changed while Dynamo traced left a
graph that skipped the sampler under a guard saying it was taken (silently too little variance).
Dynamo guards an instance attribute of a threading.local through getattr, which reads the calling
thread's value: `sampler` is set per thread in `_Thread.__init__` (a class-level default was
guarded through the class and the instance dict, and a graph compiled outside mc_predict ran
inside it unsampled), and nothing about the sampler object is guarded, since `sample` is opaque to
Dynamo (a sampler is new in every mc_predict call). Asking costs 40-60 ns a module call.
"""
import contextlib
import threading

import torch


class _Thread(threading.local):
    """Per-thread state: `sampler`, None outside an mc_predict call."""

    def __init__(self):  # (runs in each thread on its first access)
        self.sampler = None


thread = _Thread()


@torch.compiler.disable  # a compiled submodule hands its input over eagerly (Numba kernels)
def sample(module, x, *rest):
    """Module's output for x (and DropoutMatmul's b) from this thread's sampler (the caller
    checked there is one)."""
    return thread.sampler(module, x, *rest)


@contextlib.contextmanager
def sampling(s):
    """s drives this thread's fastdrop modules inside the block (the previous sampler after it)."""
    previous = thread.sampler
    thread.sampler = s
    try:
        yield
    finally:
        thread.sampler = previous
