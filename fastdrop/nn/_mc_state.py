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


# torch's fused attention path (nn.TransformerEncoderLayer / nn.MultiheadAttention in eval mode
# without autograd, as mc_predict runs them) computes the layer without calling its dropout
# modules, so their samples would all be the same, silently where other fastdrop layers of the
# model do run. Its switch is process-wide: while any mc_predict call that needs it off runs, it
# is off (counted, so overlapping calls in other threads keep it off until the last one ends; those
# threads' own attention layers then take torch's unfused path: the same values, a little slower).
_fastpath_lock = threading.Lock()
_fastpath_users = 0
_fastpath_before = True


@contextlib.contextmanager
def attention_fastpath_off(torch):
    global _fastpath_users, _fastpath_before
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):  # pragma: no cover - older torch
        yield
        return
    with _fastpath_lock:
        if _fastpath_users == 0:
            _fastpath_before = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
        _fastpath_users += 1
    try:
        yield
    finally:
        with _fastpath_lock:
            _fastpath_users -= 1
            if _fastpath_users == 0:
                mha.set_fastpath_enabled(_fastpath_before)
