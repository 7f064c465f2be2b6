"""Where seed=None draws its seed, and how data-parallel ranks get their own mask streams.

- torch tensors (CPU or CUDA): torch's default CPU generator, so `torch.manual_seed(s)` makes a
  model's masks reproducible run to run, successive calls differ, and the same program gives the
  same masks on CPU and GPU. Except during CUDA-graph capture: there a CUDA tensor's seed is drawn
  on the device by torch's CUDA generator (`device_seed_tensor`), so that each replay draws anew.
- numpy arrays and CUDA device arrays: a module-level numpy `Generator(PCG64)` seeded from OS
  entropy at import; `fastdrop.manual_seed(s)` (fastdrop/mask.py) re-seeds it. A forked child
  (DataLoader workers, servers) inherits the parent's state, so its first draw re-seeds its own
  source from two words of the inherited one and the child's key: a torch DataLoader worker's
  seed (which torch varies by worker and by epoch, from the parent's torch generator), else its
  place in the fork tree (the how-manieth fork of its parent, and so on up: pids differ from run
  to run, so a pid key made a forked child's masks unreproducible). Workers, epochs and forked
  children then draw different masks, and reproducible ones when the parent called
  `fastdrop.manual_seed` (and, for DataLoader workers, `torch.manual_seed`); a `manual_seed` in the
  child (a worker_init_fn) is kept as it is. Where nothing called `fastdrop.manual_seed` (the
  source is OS entropy), a DataLoader worker, forked or started by `spawn` / `forkserver` (macOS's
  and Windows' default, which import fastdrop afresh), re-seeds it from its worker seed alone on
  its first draw: its masks follow the parent's `torch.manual_seed` and differ by worker and
  epoch, as torch seeds numpy's own global generator in workers.
Every drawn seed is a 63-bit integer.

Rank streams. DDP programs call `torch.manual_seed(s)` with the same `s` on every rank, so the
drawn seeds agree across ranks and, with nothing else, every rank would drop the same positions of
its own micro-batch. While `torch.distributed` is initialized, every seed=None call therefore runs at

    offset' = (offset + rank * 2**48) mod 2**64

i.e. rank r's mask is `dropout_mask(shape, p, seed, offset + r * 2**48)`: the rank lands in the
top 16 bits of the Philox counter word that carries the offset's high half, so ranks < 65536 with
offsets < 2**48 never share a counter. Rank 0 (and a program without torch.distributed) is
unchanged. An explicit `seed=` is never altered: it names one mask, the same on every rank.
`set_rank_streams(False)` turns the separation off.
"""
import contextlib
import os
import sys
import threading

import numpy as np

from .kernels.philox import MAX_U64

RANK_SHIFT = 48
_lock = threading.Lock()
_numpy_source = np.random.default_rng()
_forked = False  # a forked child that has not yet re-seeded its inherited numpy source
_fresh = True  # the source is still the import's OS-entropy one: nothing drew from it or re-seeded it
_seeded = False  # fastdrop.manual_seed ran in this process, or in the parent it was forked from
_forked_in_worker = False  # this process was forked by a DataLoader worker (`_after_fork_in_child`)
_rank_streams = True
_events = 0  # draws from and re-seeds of the numpy source (`draw_numpy_seed_undoably`)
_forks = 0  # forks this process has made (`_before_fork`)
_fork_path = ()  # this process's place in the fork tree: its index among its parent's forks, and up


def reseed_numpy(seed):
    """Re-seed the numpy source (seed: an int in [0, 2**64), checked by fastdrop.manual_seed)."""
    global _numpy_source, _forked, _fresh, _seeded, _events
    with _lock:
        _numpy_source = np.random.default_rng(seed)
        _forked = _fresh = False
        _seeded = True
        _events += 1


def _before_fork():
    global _forks
    _forks += 1  # (in the parent: the child inherits the new count as its index)


def _after_fork_in_child():
    global _forked, _forked_in_worker, _lock, _events, _forks, _fork_path
    _forked = True
    _fork_path, _forks = _fork_path + (_forks,), 0
    # forked by a DataLoader worker (torch sets a worker's info after the worker's own fork, so a
    # worker sees none here): the worker's children share its worker seed, which cannot key them
    _forked_in_worker = _worker_seed() is not None
    _events += 1  # (an undo made in the child must not restore the parent's source)
    _lock = threading.Lock()  # a lock held by another parent thread at the fork stays held here


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _worker_seed():
    """A torch DataLoader worker's seed (base seed + worker id, new each epoch), else None."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return None if info is None else int(info.seed)


def _child_key():
    """A forked child's key, as 64-bit words: its DataLoader worker seed, else (any other child, a
    worker's own children included) its place in the fork tree, which the same program makes
    again run after run (a pid does not). A child that forks before its first draw passes its
    inherited source on unchanged, so the path, not the last index alone, tells its children
    from their siblings and from it."""
    key = None if _forked_in_worker else _worker_seed()
    if key is None:
        return [0x70617468, len(_fork_path)] + list(_fork_path)  # "path"
    return [0x776B6572, key & MAX_U64, key >> 64]  # "wker"


def _reseed_before_a_draw():
    """The first draw of a forked child or a fresh process (with _lock held). A DataLoader worker
    whose source is OS entropy (no fastdrop.manual_seed here or in its parent), forked or spawned:
    a source from its worker seed alone, which the parent's torch.manual_seed reproduces. Any
    other forked child (a worker's own children too: they share its worker seed): its own source
    from the inherited one and its key (`_reseed_forked`)."""
    global _numpy_source, _forked, _fresh
    key = _worker_seed() if not (_seeded or _forked_in_worker) else None
    if key is not None:
        _numpy_source = np.random.Generator(np.random.PCG64(
            np.random.SeedSequence([key & MAX_U64, key >> 64, 0x776B7272])))  # "wkrr"
    elif _forked:
        _reseed_forked()
    _forked = _fresh = False


def _reseed_forked():
    """The child's own source: a pure function of the inherited state and the child's key (with
    _lock held)."""
    global _numpy_source, _forked
    inherited = [int(w) for w in _numpy_source.integers(0, 1 << 63, 2)]
    _numpy_source = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(inherited + _child_key() + [0x666F726B])))  # "fork"
    _forked = False


def draw_numpy_seed():
    global _events
    with _lock:
        if _forked or _fresh:
            _reseed_before_a_draw()
        _events += 1
        return int(_numpy_source.integers(0, 1 << 63))


# Undoable draws: a call that fails after its seed=None draw (an activation or a model that cannot
# take its input) gives the draw back, so that a failed call changes nothing, but only while that
# draw is still the last thing that happened to the generator. Restoring an older state
# unconditionally rewound the draws other threads made meanwhile (two later calls then drew the
# same seed: the same masks) and a manual_seed made meanwhile.

def draw_numpy_seed_undoably():
    """(seed, undo): `draw_numpy_seed`, and a function that gives the draw back if no draw or
    re-seed of the numpy source has happened since."""
    global _events
    with _lock:
        source, state, forked, fresh = _numpy_source, _numpy_source.bit_generator.state, _forked, _fresh
        if _forked or _fresh:
            _reseed_before_a_draw()
        _events += 1
        mine = _events
        seed = int(_numpy_source.integers(0, 1 << 63))

    def undo():
        global _numpy_source, _forked, _fresh
        with _lock:
            if _events == mine:
                source.bit_generator.state = state
                _numpy_source, _forked, _fresh = source, forked, fresh
    return seed, undo


def draw_torch_seed_undoably(torch):
    """(seed, undo): `draw_torch_seed`, and a function that gives the draw back if torch's CPU
    generator is exactly one such draw past the state before it: no other draw happened before,
    with or after it, in any thread (the state one draw on is replayed on a private generator, so
    a draw of another thread between the snapshot and this one counts too). torch has no lock to
    hold: a draw made between undo's check and its restore is the one case not seen."""
    before = torch.get_rng_state()
    seed = draw_torch_seed()

    def undo():
        replay = torch.Generator(device="cpu")
        replay.set_state(before)
        torch.empty((), dtype=torch.int64, device="cpu").random_(0, _SEED_HIGH, generator=replay)
        if torch.equal(torch.get_rng_state(), replay.get_state()):
            torch.set_rng_state(before)
    return seed, undo


_SEED_HIGH = (1 << 63) - 1
_seed_buffers = threading.local()  # per thread: two threads filling one buffer could read one seed


def draw_torch_seed():
    """A seed from torch's default CPU generator: the value, and the generator state consumed, of
    `torch.randint(0, 2**63 - 1, (), dtype=torch.int64)` (randint is `empty().random_(lo, hi)`),
    drawn into a reused 0-d buffer, which costs a third of a fresh tensor each call."""
    torch = sys.modules["torch"]
    if torch._C._is_tracing() or torch._C._are_functorch_transforms_active():
        # torch.jit.trace would record the buffer's write: the plain factory call there (the int
        # becomes a constant of the trace, as torch's TracerWarning says); under torch.func
        # transforms the draw is made outside them (torch_seed_tensor)
        return int(torch_seed_tensor(torch))
    return draw_torch_seed_eager(torch)


def torch_seed_tensor(torch):
    """`draw_torch_seed`'s draw as a 0-d int64 tensor (`torch.randint`, which torch.jit.trace
    and make_fx record as a random op)."""
    # One seed for the whole transformed call, drawn outside torch.func's transforms: under
    # vmap(randomness="different") a draw inside would be batched (and .item() refused); the op's
    # vmap rule turns the one seed into a mask per example (or one for all, "same").
    outside = torch._C._DisableFuncTorch() if torch._C._are_functorch_transforms_active() \
        else contextlib.nullcontext()
    with outside:
        return torch.randint(0, _SEED_HIGH, (), dtype=torch.int64, device="cpu")


def draw_torch_seed_eager(torch):
    """draw_torch_seed when neither torch.jit.trace nor a torch.func transform is running (the
    caller has checked). The value is read through a numpy view of the buffer: `int(tensor)` is a
    second trip through torch's dispatcher (`item`), which inside a training step, where every
    call runs cold, cost about as much as the draw itself."""
    pair = getattr(_seed_buffers, "pair", None)
    if pair is None:  # (the buffer, its numpy view)
        buf = _new_seed_buffer(torch)
        pair = _seed_buffers.pair = (buf, buf.numpy())
    pair[0].random_(0, _SEED_HIGH)
    return int(pair[1])


def device_seed_tensor(torch, device):
    """A seed drawn on CUDA `device`'s current stream by torch's CUDA generator, as a 0-d int64
    tensor there (the range of `draw_torch_seed`). For CUDA-graph capture: torch's CUDA RNG reads
    its Philox state from memory that each replay advances, so every replay draws a new seed."""
    return torch.empty((), dtype=torch.int64, device=device).random_(0, _SEED_HIGH)


def _new_seed_buffer(torch):
    # A normal tensor even when the first draw runs under torch.inference_mode (an inference
    # tensor could not be written in place by later draws outside that mode), and a CPU one
    # whatever torch.set_default_device says (the seed comes from the CPU generator).
    # Past the thread's modes too: a dispatch mode could hand back a tensor without memory,
    # which .numpy() cannot view (the first draw of a process inside one failed)
    # (a factory call: nothing of a subclass to keep, so torch's own switches)
    C = torch._C
    with torch.inference_mode(False), C._DisableTorchDispatch(), C.DisableTorchFunction():
        return torch.empty((), dtype=torch.int64, device="cpu")


def set_rank_streams(enabled=True):
    """Separate (True, the default) or share (False) seed=None masks across torch.distributed ranks.

    Returns the previous setting.
    """
    global _rank_streams
    if isinstance(enabled, np.bool_):  # numpy's bool, as every flag takes it (`_checks.check_bool`)
        enabled = bool(enabled)
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    previous, _rank_streams = _rank_streams, enabled
    return previous


# torch.distributed.is_available(), a property of the build: asked once, when fastdrop's torch ops
# register (`note_torch`; asked inside a torch.compile trace, the answer changed a global under
# Dynamo's guard and the first compiled call compiled twice), or by the first rank query before that
_dist_available = None


# torch.distributed's `_World` object, whose `_default_pg` is the default process group (None until
# init_process_group, again after destroy_process_group): `_rank` reads it, where
# `dist.is_initialized()` is three Python calls (it, the WORLD class property, `default_pg`), ~2 us
# of every seed=None call inside a training step, where every call runs cold. None where a torch
# keeps it otherwise: then `is_initialized()`.
_world = None


def note_torch():
    """Ask torch's build what `_rank` needs to know, now (torch is imported)."""
    global _dist_available, _world
    dist = sys.modules.get("torch.distributed")
    if dist is not None and _dist_available is None:
        _dist_available = dist.is_available()
        world = getattr(getattr(dist, "distributed_c10d", None), "_world", None) if _dist_available else None
        if world is not None and "_default_pg" in getattr(world, "__dict__", ()) and \
                (world._default_pg is None) == (not dist.is_initialized()):
            _world = world


def _rank():
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return 0
    if _dist_available is None:
        note_torch()
    if not _dist_available:
        return 0
    world = _world
    if (world._default_pg is None) if world is not None else not dist.is_initialized():
        return 0
    return dist.get_rank()


def stream_offset(offset):
    """The offset a seed=None call runs at on this process (see the module docstring)."""
    if not _rank_streams:
        return offset
    rank = _rank()
    return offset if rank == 0 else (offset + (rank << RANK_SHIFT)) & MAX_U64
