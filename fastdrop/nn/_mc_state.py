"""Which mc_predict call, if any, drives the fastdrop modules a thread runs (fastdrop/nn/mc.py).

mc_predict does not change the model: no module is switched to training and no forward is
replaced. It installs a sampler for its own thread; the forward of each fastdrop stochastic module
asks for it first and, inside an mc_predict call, hands its input to the sampler instead of its
op. Other threads running the same model (eval forwards, other mc_predict calls) see their own
sampler or none, so they are not affected.
"""
import contextlib
import threading

active = 0  # mc_predict calls running now, in all threads: the modules look further only when > 0
_count_lock = threading.Lock()
_local = threading.local()


def sampler():
    """The sampler of this thread's running mc_predict call, or None."""
    return getattr(_local, "sampler", None)


@contextlib.contextmanager
def sampling(s):
    """s drives this thread's fastdrop modules inside the block (the previous sampler after it)."""
    global active
    previous = sampler()
    with _count_lock:
        active += 1
    _local.sampler = s
    try:
        yield
    finally:
        _local.sampler = previous
        with _count_lock:
            active -= 1
