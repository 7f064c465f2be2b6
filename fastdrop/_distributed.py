"""Separate the mask streams of data-parallel ranks (torch.distributed).

DDP programs usually call `torch.manual_seed(s)` with the same `s` on every rank, so the seeds
that seed=None draws from torch's generator are the same on every rank; with nothing else, every
rank would drop the same positions of its own micro-batch. While `torch.distributed` is
initialized, a call with seed=None therefore runs at

    offset' = (offset + rank * 2**48) mod 2**64

i.e. rank r's mask is `dropout_mask(shape, p, seed, offset + r * 2**48)`: the rank lands in the
top 16 bits of the Philox counter word that carries the offset's high half, so ranks < 65536
with offsets < 2**48 never share a counter. Rank 0 (and a program without torch.distributed) is
unchanged. An explicit `seed=` is never altered: it names one mask, the same on every rank.

`set_rank_streams(False)` turns the separation off (every rank then draws the same masks when its
torch generator is in the same state), e.g. to compare a multi-process run with a
single-process one mask for mask.
"""
import sys

RANK_SHIFT = 48
_enabled = True


def set_rank_streams(enabled=True):
    """Separate (True, the default) or share (False) seed=None masks across torch.distributed ranks.

    Returns the previous setting.
    """
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    previous, _enabled = _enabled, enabled
    return previous


def rank_streams_enabled():
    return _enabled


def _rank():
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank()


def stream_offset(offset):
    """The offset a seed=None call runs at on this process (see the module docstring)."""
    if not _enabled:
        return offset
    rank = _rank()
    if rank == 0:
        return offset
    return (offset + (rank << RANK_SHIFT)) & ((1 << 64) - 1)
