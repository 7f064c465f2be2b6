"""The caching allocator behind large CPU outputs (fastdrop/_alloc.py): right values, blocks reused
only once no tensor refers to them, size classes, 64-byte alignment, a bound that an environment
variable sets, and faults (GC re-entry, KeyboardInterrupt, out of memory) that leave it consistent."""
import collections
import gc
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _alloc

ROWS, COLS = 4096, 2048  # 32 MiB of float32: the smallest pooled size
MIB = 1 << 20


def _reference(x, p, seed):
    m = torch.from_numpy(fastdrop.dropout_mask(x.shape, p, seed))
    return torch.where(m, x * (1 / (1 - p)), torch.zeros((), dtype=x.dtype))


def _consistent(stats):
    """The free list and the handed-out set agree with what the allocator reports."""
    with _alloc._lock:
        assert stats["free_blocks"] == len(_alloc._free)
        assert stats["cached_bytes"] == sum(b.nbytes for b in _alloc._free) <= stats["limit_bytes"]
        assert stats["in_use_blocks"] == len(_alloc._live)
        blocks = [b.ctypes.data for b in _alloc._free] + [h.block.ctypes.data for h in _alloc._live.values()]
        assert len(blocks) == len(set(blocks)), "a block is both free and handed out, or listed twice"


@pytest.fixture(autouse=True)
def _clean_cache():
    gc.collect()
    _alloc.empty_cache()
    yield
    gc.collect()
    _alloc.empty_cache()


def _run(script, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_large_outputs_are_right_and_reused_after_release():
    x = torch.randn(ROWS, COLS)
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert torch.equal(y, _reference(x, 0.5, 1))
    ptr = y.data_ptr()
    del y
    y2 = fastdrop.dropout(x, 0.5, seed=2)
    assert y2.data_ptr() == ptr
    assert torch.equal(y2, _reference(x, 0.5, 2))


def test_live_outputs_are_never_handed_out_again():
    x = torch.randn(ROWS, COLS)
    held = [fastdrop.dropout(x, 0.5, seed=s) for s in (3, 4, 5)]
    view = fastdrop.dropout(x, 0.5, seed=6)[:10]  # a view keeps its whole block alive
    ptrs = {t.data_ptr() for t in held}
    assert len(ptrs) == 3
    for _ in range(3):
        fastdrop.dropout(x, 0.5, seed=7)
    for s, t in zip((3, 4, 5), held):
        assert torch.equal(t, _reference(x, 0.5, s))
    assert torch.equal(view, _reference(x, 0.5, 6)[:10])


def test_backward_through_pooled_outputs():
    x = torch.randn(ROWS, COLS, requires_grad=True)
    y = fastdrop.dropout(x, 0.3, seed=8)
    y.backward(torch.ones_like(y))
    m = torch.from_numpy(fastdrop.dropout_mask(x.shape, 0.3, 8))
    assert torch.equal(x.grad, torch.where(m, torch.tensor(1 / 0.7), torch.tensor(0.0)))


def test_cache_is_bounded():
    x = torch.randn(ROWS, COLS)
    outs = [fastdrop.dropout(x, 0.5, seed=s) for s in range(20)]  # 640 MiB live
    assert _alloc.cache_stats()["in_use_blocks"] == 20
    del outs
    stats = _alloc.cache_stats()
    assert 0 < stats["cached_bytes"] <= stats["limit_bytes"] == _alloc.MAX_CACHED_BYTES
    assert stats["in_use_blocks"] == 0
    _consistent(stats)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "permuted 3-d"])
def test_large_outputs_of_dense_layouts_are_pooled_in_x_s_layout(layout):
    """A large output in a dense non-C order (channels_last activations, a transposed matrix) came
    from torch.empty_like, fresh memory and its page faults every call (7x the contiguous time at
    32x128x56x56; a helper's perf-cliff hunt): it is carved from the cache now, with the strides
    torch.empty_like gives (x's), and the kernel's values, forward and backward."""
    make = {"channels_last": lambda: torch.randn(8, 64, 128, 129).contiguous(memory_format=torch.channels_last),
            "transposed": lambda: torch.randn(COLS, ROWS).t(),
            "permuted 3-d": lambda: torch.randn(64, 1024, 129).permute(2, 0, 1)}[layout]
    x = make().requires_grad_()
    before = _alloc.cache_stats()["misses"] + _alloc.cache_stats()["hits"]
    y = fastdrop.dropout(x, 0.4, seed=5)
    assert _alloc.cache_stats()["misses"] + _alloc.cache_stats()["hits"] > before
    assert y.stride() == x.stride() == torch.empty_like(x).stride()
    assert torch.equal(y, _reference(x.detach().contiguous(), 0.4, 5))
    with torch.no_grad():  # a fresh tensor, not a view (as_strided's view made under no_grad
        z = fastdrop.drop_path(x, 0.4)  # could not be changed in place under grad mode; the lane)
    assert not z._is_view() and z.stride() == x.stride()
    z.mul_(torch.ones(1, requires_grad=True))
    del z
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(g, _reference(torch.ones(x.shape), 0.4, 5))
    del y, g
    gc.collect()
    stats = _alloc.cache_stats()
    assert stats["in_use_blocks"] == 0
    _consistent(stats)


@pytest.mark.parametrize("make", ["sliced", "expanded", "sliced_transposed", "sliced_channels_last"])
def test_gapped_and_expanded_layouts_get_a_pooled_output_in_torchs_layout(make):
    """A layout with gaps (a slice) or overlaps (the expanded gradient of a sum) is not dense: its
    output has torch.empty_like's layout, dense in x's stride order (C order for a plain slice or
    an expansion, not for a sliced transpose or channels_last tensor), and comes from the pool
    (since 2026-12-06; torch's fresh memory cost ~11 ms of page faults per 64 MiB backward)."""
    x = {"sliced": lambda: torch.randn(ROWS, 2 * COLS)[:, ::2],
         "expanded": lambda: torch.randn(1, COLS).expand(ROWS, COLS),
         "sliced_transposed": lambda: torch.randn(ROWS, COLS + 8)[:, :COLS].t(),
         "sliced_channels_last": lambda: torch.randn(2, ROWS, COLS // 2, 6).contiguous(
             memory_format=torch.channels_last)[..., :4]}[make]()
    before = _alloc.cache_stats()
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert y.stride() == torch.empty_like(x).stride()
    assert torch.equal(y, _reference(x.contiguous(), 0.5, 1))
    assert _alloc.cache_stats()["in_use_blocks"] == before["in_use_blocks"] + 1


def test_small_and_strided_outputs_use_torch():
    small = fastdrop.dropout(torch.randn(64, 64), 0.5, seed=1)
    small.resize_(10)  # an ordinary torch tensor: resizable
    cl = torch.randn(64, 64, 64, 64).to(memory_format=torch.channels_last)
    assert fastdrop.dropout(cl, 0.5, seed=1).is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite(small.numpy()).all()


@pytest.mark.parametrize("shape, dtype", [((ROWS, COLS), torch.float32), ((ROWS * COLS + 1,), torch.float32),
                                          ((3, 1398107), torch.float64), ((ROWS, COLS + 3), torch.float64)])
def test_pooled_outputs_are_64_byte_aligned_and_exactly_sized(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    ys = [_alloc.empty_like(x) for _ in range(3)]  # fresh blocks
    del ys
    ys = [_alloc.empty_like(x) for _ in range(3)]  # blocks from the free list
    assert _alloc.cache_stats()["hits"] >= 3
    for y in ys:
        assert y.data_ptr() % 64 == 0
        assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
        assert y.untyped_storage().nbytes() == x.numel() * x.element_size()


def test_size_classes():
    assert _alloc.size_class(32 * MIB) == 32 * MIB
    assert _alloc.size_class(32 * MIB + 1) == 36 * MIB
    assert _alloc.size_class(36 * MIB + 1) == 40 * MIB
    assert _alloc.size_class(64 * MIB + 1) == 72 * MIB
    for n in range(32 * MIB, 129 * MIB, 997 * 1024 + 13):
        c = _alloc.size_class(n)
        assert n <= c < n * 9 / 8 and c % 4096 == 0


def test_different_sizes_share_a_block():
    a = torch.randn(ROWS * COLS + 1)            # 32 MiB + 4 bytes: the 36 MiB class
    b = torch.randn(ROWS * COLS + 1000 * 1024)  # 35.9 MiB: the same class
    ya = fastdrop.dropout(a, 0.5, seed=1)
    ptr = ya.data_ptr()
    del ya
    yb = fastdrop.dropout(b, 0.5, seed=2)
    assert yb.data_ptr() == ptr
    assert yb.numel() == b.numel() and torch.equal(yb, _reference(b, 0.5, 2))


def test_many_distinct_sizes_use_few_blocks():
    # The old cache, keyed by exact size, kept one block per size: 40 sizes left 491 MiB in 14 blocks.
    before = _alloc.cache_stats()
    for k in range(40):
        y = _alloc.empty_like(torch.empty(ROWS * COLS + k * 123457 + 7))
        y.fill_(1.0)
        del y
    stats = _alloc.cache_stats()
    assert stats["misses"] - before["misses"] <= 5   # 32 .. 51 MiB span 5 classes
    assert stats["hits"] - before["hits"] >= 35
    assert stats["free_blocks"] <= 5 and stats["cached_bytes"] <= 5 * 52 * MIB
    _consistent(stats)


def test_empty_cache_releases_free_blocks_and_cache_stats_reports():
    x = torch.randn(ROWS, COLS)
    stats = fastdrop.cache_stats()
    assert stats == _alloc.cache_stats()
    assert set(stats) == {"cached_bytes", "free_blocks", "in_use_bytes", "in_use_blocks", "hits", "misses",
                          "limit_bytes", "min_bytes"}
    assert stats["cached_bytes"] == stats["free_blocks"] == stats["in_use_blocks"] == 0
    keep = fastdrop.dropout(x, 0.5, seed=1)
    outs = [fastdrop.dropout(x, 0.5, seed=s) for s in (2, 3)]
    stats = fastdrop.cache_stats()
    assert stats["in_use_blocks"] == 3 and stats["in_use_bytes"] >= 3 * 32 * MIB and stats["free_blocks"] == 0
    del outs
    stats = fastdrop.cache_stats()
    assert stats["free_blocks"] == 2 and stats["cached_bytes"] >= 2 * 32 * MIB and stats["in_use_blocks"] == 1
    assert fastdrop.empty_cache() == stats["cached_bytes"]
    stats = fastdrop.cache_stats()
    assert stats["cached_bytes"] == stats["free_blocks"] == 0 and stats["in_use_blocks"] == 1
    assert torch.equal(keep, _reference(x, 0.5, 1))  # live outputs are untouched
    assert fastdrop.empty_cache() == 0
    del keep
    assert fastdrop.cache_stats()["free_blocks"] == 1  # and come back when they die


def test_cache_api_works_without_torch():
    res = _run("""
        import sys
        sys.modules['torch'] = None
        import fastdrop
        s = fastdrop.cache_stats()
        assert s['cached_bytes'] == 0 and s['limit_bytes'] == 512 << 20, s
        assert fastdrop.empty_cache() == 0
        print('ok')
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


ENV_SCRIPT = """
    import torch, fastdrop
    from fastdrop._alloc import empty_like
    x = torch.randn(4096, 2048)
    outs = [empty_like(x) for _ in range(3)]
    resizable = True
    try:
        outs[0].resize_(4096 * 2049)  # growing needs a resizable storage
    except RuntimeError:
        resizable = False
    del outs
    s = fastdrop.cache_stats()
    print(s['limit_bytes'], s['free_blocks'], s['misses'], resizable)
"""


@pytest.mark.parametrize("value, expected", [
    ("0", f"0 0 0 True"),                                  # off: every output is torch's own
    ("64M", f"{64 * MIB} 1 3 False"),                      # room for one 32 MiB block
    ("268435456", f"{256 * MIB} 3 3 False"),
    ("lots", f"{512 * MIB} 3 3 False"),                    # bad value: warning, default bound
])
def test_env_var_turns_the_cache_off_or_caps_it(value, expected):
    res = _run(ENV_SCRIPT, env={"FASTDROP_CACHE_MAX_BYTES": value})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected
    if value == "lots":
        assert "FASTDROP_CACHE_MAX_BYTES='lots' is not a byte count" in res.stderr
        assert "RuntimeWarning" in res.stderr


@pytest.mark.parametrize("text, nbytes", [("0", 0), ("1234", 1234), (" 256M ", 256 * MIB), ("2GiB", 2 << 30),
                                          ("1g", 1 << 30), ("512mb", 512 * MIB), ("3K", 3072)])
def test_parse_max_bytes(text, nbytes):
    assert _alloc.parse_max_bytes(text) == nbytes


@pytest.mark.parametrize("text", ["-1", "1.5G", "lots", "", "12 X", "0x100"])
def test_parse_max_bytes_names_the_bad_value(text):
    with pytest.raises(ValueError, match=f"FASTDROP_CACHE_MAX_BYTES={text!r} is not a byte count"):
        _alloc.parse_max_bytes(text)


# Forces a garbage collection at the `at`-th Python line run inside the allocator, for every `at`,
# while another pooled output is cyclic garbage: the collection frees it, and its hand-back runs in
# the middle of whatever the allocator was doing. The old allocator took its (non-reentrant) lock in
# the hand-back and hung here ( _give -> GC -> weakref.finalize -> _give ).
GC_SCRIPT = """
    import faulthandler, gc, sys, torch, fastdrop
    from fastdrop import _alloc
    faulthandler.dump_traceback_later(100, exit=True)
    _alloc.MIN_BYTES = 1 << 16  # pool small outputs too: the same code paths, quicker
    x = torch.randn(512, 256)
    fastdrop.dropout(x, 0.5, seed=0)
    gc.freeze()  # the imports' objects out of the way: each GC pass scans only the loop's objects
    state = {"at": 0, "n": 0, "most": 0}
    def local(frame, event, arg):
        if event == "line":
            state["n"] += 1
            if state["n"] == state["at"]:
                gc.collect()
        return local
    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == _alloc.__file__ else None
    for at in range(1, 161):
        b = fastdrop.dropout(x, 0.5, seed=at)
        a = fastdrop.dropout(x, 0.5, seed=at)
        box = [a]; box.append(box); del a, box   # freed only by a GC pass
        state.update(at=at, n=0)
        sys.settrace(tracer)
        del b                                    # b's block goes back
        c = fastdrop.dropout(x, 0.5, seed=at)    # and the next output is taken
        sys.settrace(None)
        state["most"] = max(state["most"], state["n"])
        assert torch.equal(c, fastdrop.dropout(x, 0.5, seed=at))
        del c
    gc.collect()
    s = _alloc.cache_stats()
    assert s["in_use_blocks"] == 0 and s["free_blocks"] >= 1, s
    print("ok", state["most"])
"""


def test_gc_inside_the_allocator_does_not_hang():
    try:
        res = _run(GC_SCRIPT, timeout=150)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"a GC pass inside the allocator hung the process:\n{err.stderr}")
    assert res.returncode == 0, res.stderr
    word, most = res.stdout.split()
    assert word == "ok"
    assert 0 < int(most) < 160  # every line the allocator ran had its GC pass


class _InterruptingQueue(collections.deque):
    """The hand-back queue, failing as a KeyboardInterrupt landing there would."""
    def append(self, handle):
        raise KeyboardInterrupt


def test_keyboard_interrupt_in_the_hand_back_loses_no_block(monkeypatch):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_type))
    x = torch.randn(ROWS, COLS)
    monkeypatch.setattr(_alloc, "_returned", _InterruptingQueue())
    y = fastdrop.dropout(x, 0.5, seed=1)  # its hand-back now raises
    ptr = y.data_ptr()
    del y
    assert unraisable == [KeyboardInterrupt]
    monkeypatch.setattr(_alloc, "_returned", collections.deque())
    stats = _alloc.cache_stats()  # the dead handle is found and its block kept, once
    assert stats["in_use_blocks"] == 0 and stats["free_blocks"] == 1
    _consistent(stats)
    y = fastdrop.dropout(x, 0.5, seed=2)
    assert y.data_ptr() == ptr and torch.equal(y, _reference(x, 0.5, 2))


class _InterruptedDrain(collections.deque):
    """Raises KeyboardInterrupt once, after a handle has left the queue and before its block is kept."""
    def popleft(self):
        handle = super().popleft()
        if not getattr(self, "fired", False):
            self.fired = True
            raise KeyboardInterrupt
        return handle


def test_keyboard_interrupt_in_the_drain_reaches_the_caller_and_corrupts_nothing(monkeypatch):
    x = torch.randn(ROWS, COLS)
    queue = _InterruptedDrain()
    monkeypatch.setattr(_alloc, "_returned", queue)
    ys = [fastdrop.dropout(x, 0.5, seed=s) for s in (1, 2)]
    ptrs = {y.data_ptr() for y in ys}
    del ys
    assert len(queue) == 2
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is not swallowed
        fastdrop.dropout(x, 0.5, seed=3)
    stats = _alloc.cache_stats()
    assert stats["in_use_blocks"] == 0 and stats["free_blocks"] == 2
    _consistent(stats)
    ys = [fastdrop.dropout(x, 0.5, seed=s) for s in (4, 5)]
    assert {y.data_ptr() for y in ys} == ptrs


def test_request_larger_than_ram_is_a_memory_error(tmp_path):
    # A file-backed tensor bigger than physical memory (sparse: nothing is written).
    n = (_alloc.PHYSICAL_BYTES // 4 + (1 << 28)) // 4 * 4
    huge = torch.from_file(str(tmp_path / "huge.bin"), shared=True, size=n, dtype=torch.float32)
    keep = _alloc.empty_like(torch.empty(ROWS, COLS))
    del keep
    before = _alloc.cache_stats()
    with pytest.raises(MemoryError, match="more than this process's .* bytes of memory"):
        _alloc.empty_like(huge)
    assert _alloc.cache_stats() == before
    _consistent(before)


def _limits(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_dropout_mask_refuses_past_the_process_memory(monkeypatch):
    """dropout_mask's own refusal reads the same limit as the outputs' (a cgroup limit lowers it;
    it read physical memory itself, a review): stood in for here by a 1 MiB limit."""
    monkeypatch.setattr(_alloc, "PHYSICAL_BYTES", 1 << 20)
    with pytest.raises(MemoryError, match="dropout_mask: .* more than this process's 1048576 bytes"):
        fastdrop.dropout_mask((4 << 20,), 0.5, 1)
    with pytest.raises(MemoryError, match="1048576 bytes"):
        fastdrop.dropout(np.ones(1 << 19, np.float32), 0.5, seed=1)
    assert fastdrop.dropout_mask((1 << 19,), 0.5, 1).size == 1 << 19


def test_cgroup_memory_limit(tmp_path):
    """A container's or a scheduler's memory limit lowers the size refused before the draw (past
    it the OOM killer ends the process where fastdrop would raise MemoryError): the lowest of the
    group's and its ancestors' limits, cgroup v2 and v1; "max" and v1's largest int mean none."""
    root = tmp_path / "cg"
    _limits(root, {"memory.max": "max\n", "job/memory.max": "8589934592\n",
                   "job/step/memory.max": "max\n", "job/step/task/memory.max": "17179869184\n"})
    assert _alloc.cgroup_memory_limit("0::/job/step/task\n", str(root)) == 8 << 30
    assert _alloc.cgroup_memory_limit("0::/\n", str(root)) is None  # (the root's "max")
    assert _alloc.cgroup_memory_limit("0::/other\n", str(root)) is None  # (no files: unreadable)
    v1 = tmp_path / "v1"
    _limits(v1, {"memory/memory.limit_in_bytes": "9223372036854771712\n",
                 "memory/docker/abc/memory.limit_in_bytes": "2147483648\n"})
    text = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert _alloc.cgroup_memory_limit(text, str(v1)) == 2 << 30
    assert _alloc.cgroup_memory_limit("4:memory:/\n", str(v1)) is None
    # joined controllers (v1 "cpu,memory") and a hybrid host's v2 line: the lowest of all
    _limits(v1, {"cpu,memory/g/memory.limit_in_bytes": "4096\n"})
    assert _alloc.cgroup_memory_limit("3:cpu,memory:/g\n0::/job\n", str(v1)) == 4096
    assert _alloc.cgroup_memory_limit("garbage", str(v1)) is None
    # a group outside the process's cgroup namespace ("/../x") or a zero limit: not read / not used
    _limits(tmp_path, {"memory.max": "4096\n"})
    assert _alloc.cgroup_memory_limit("0::/../x\n", str(root)) is None
    _limits(root, {"zero/memory.max": "0\n"})
    assert _alloc.cgroup_memory_limit("0::/zero\n", str(root)) is None
    # contents no kernel writes, and a group name that is not UTF-8: none, never an exception
    # (one at import made `import fastdrop` fail; a review)
    _limits(root, {"odd/memory.max": "\u00b2\n", "odd/long/memory.max": "9" * 5000 + "\n"})
    assert _alloc.cgroup_memory_limit("0::/odd/long\n", str(root)) is None
    assert _alloc.cgroup_memory_limit("0::/caf\udce9\n", str(root)) is None


def test_a_non_utf8_cgroup_name_does_not_break_the_import(monkeypatch):
    """/proc/self/cgroup names the group, and a group's name may be any bytes."""
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/cgroup":
            return io.BytesIO(b"0::/caf\xe9\n")
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(_alloc, "open", fake_open, raising=False)
    assert _alloc._physical_bytes() > 0


def test_failed_allocation_releases_the_cache_retries_and_stays_consistent(monkeypatch):
    x = torch.randn(ROWS, COLS)
    ys = [fastdrop.dropout(x, 0.5, seed=s) for s in (1, 2)]
    del ys[1]
    assert _alloc.cache_stats()["free_blocks"] == 1
    big = torch.empty(ROWS, 3 * COLS)  # a size class with no free block
    real = _alloc._os_alloc
    calls = []

    def alloc_when_cache_empty(nbytes):  # room for the request only once the free blocks are gone
        calls.append(nbytes)
        if _alloc._free:
            raise MemoryError("simulated")
        return real(nbytes)
    monkeypatch.setattr(_alloc, "_os_alloc", alloc_when_cache_empty)
    y = _alloc.empty_like(big)
    assert len(calls) == 2 and y.numel() == big.numel()
    stats = _alloc.cache_stats()
    assert stats["free_blocks"] == 0 and stats["in_use_blocks"] == 2

    def never(nbytes):
        raise MemoryError("simulated")
    monkeypatch.setattr(_alloc, "_os_alloc", never)
    with pytest.raises(MemoryError, match="cannot allocate a .*-byte output"):
        _alloc.empty_like(torch.empty(ROWS, 5 * COLS))
    stats = _alloc.cache_stats()
    assert stats["in_use_blocks"] == 2 and stats["free_blocks"] == 0
    _consistent(stats)
    monkeypatch.setattr(_alloc, "_os_alloc", real)
    del y
    assert torch.equal(ys[0], _reference(x, 0.5, 1))
    assert _alloc.cache_stats()["free_blocks"] == 1


def test_outputs_of_pooled_sizes_keep_the_input_s_subclass(monkeypatch):
    """A tensor subclass with torch's default __torch_function__ comes back as itself from
    torch's ops at every size; pooled outputs (from_numpy of a cached block) were plain tensors, so
    the output's type depended on its size. A Parameter's output is a plain tensor, as torch's."""
    import torch
    import fastdrop

    class Tagged(torch.Tensor):
        pass

    monkeypatch.setattr(_alloc, "MIN_BYTES", 1 << 16)  # pool outputs at this test's sizes
    x = torch.randn(4, 64, 32, 32)  # 1 MiB: the parallel routes, which take pooled outputs
    calls = [lambda t: fastdrop.dropout(t, 0.3), lambda t: fastdrop.dropout2d(t, 0.3),
             lambda t: fastdrop.drop_path(t, 0.3), lambda t: fastdrop.dropout(t, 0.3, seed=1)]
    for call in calls:
        for grad in (False, True):
            t = x.clone().as_subclass(Tagged).requires_grad_(grad)
            assert type(torch.nn.functional.dropout(t, 0.3)) is Tagged  # torch's own op
            torch.manual_seed(0)
            y = call(t)
            torch.manual_seed(0)
            plain = call(x)
            assert type(y) is Tagged and type(plain) is torch.Tensor
            assert torch.equal(y.as_subclass(torch.Tensor), plain)
        assert type(call(torch.nn.Parameter(x.clone()))) is torch.Tensor


# ----------------------------------------------------------------------------- huge pages
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _vm_flags(address):
    """The VmFlags of the mapping holding address, from /proc/self/smaps."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    return flags


@pytest.mark.skipif(not os.path.exists(THP), reason="no transparent huge pages (Linux only)")
@pytest.mark.parametrize("advise", [True, False])
def test_uncached_large_outputs_are_advised_huge_pages(monkeypatch, advise):
    # cache off: the output is torch's fresh allocation, whose whole 2 MiB pages are advised
    # MADV_HUGEPAGE ("hg" in the mapping's VmFlags) before the kernel writes them
    monkeypatch.setattr(_alloc, "MAX_CACHED_BYTES", 0)
    monkeypatch.setattr(_alloc, "HUGEPAGES", advise)
    x = torch.randn(ROWS + 1, COLS)
    y = fastdrop.dropout(x, 0.5, seed=3)
    torch.testing.assert_close(y, _reference(x, 0.5, 3), rtol=0, atol=0)
    inner = -(-y.data_ptr() // _alloc.HUGE_PAGE) * _alloc.HUGE_PAGE
    flags = _vm_flags(inner)
    assert flags is not None
    assert ("hg" in flags) == advise, flags


def test_huge_page_advice_only_for_large_plain_cpu_memory(monkeypatch):
    # (the mapping of a small output cannot show it: numpy advises its own arrays of 4 MiB and
    # more, and glibc may place a small tensor in memory one of them used)
    calls = []
    monkeypatch.setattr(_alloc, "_madvise", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr(_alloc, "MAX_CACHED_BYTES", 0)
    _alloc.empty_like(torch.empty(64, 512))                       # below MIN_BYTES
    _alloc.empty_like(torch.empty(ROWS, COLS, device="meta"))     # no memory
    assert calls == []
    y = _alloc.empty_like(torch.empty(2 * ROWS, COLS, dtype=torch.float16).t())  # a half type, transposed
    assert len(calls) == 1
    lo, n, advice = calls[0]
    assert advice == _alloc.MADV_HUGEPAGE and lo % _alloc.HUGE_PAGE == 0 and n % _alloc.HUGE_PAGE == 0
    assert y.data_ptr() <= lo and lo + n <= y.data_ptr() + y.numel() * y.element_size()


def test_env_var_turns_huge_page_advice_off():
    script = "from fastdrop import _alloc; print(_alloc.HUGEPAGES)"
    assert _run(script, env={"FASTDROP_HUGEPAGES": "0"}).stdout.strip() == "False"
    linux = str(sys.platform.startswith("linux"))
    for off in ("false", "Off", "no"):  # (only "0" turned it off: a review)
        assert _run(script, env={"FASTDROP_HUGEPAGES": off}).stdout.strip() == "False", off
    bad = _run(script, env={"FASTDROP_HUGEPAGES": "maybe"})
    assert bad.stdout.strip() == linux and "FASTDROP_HUGEPAGES='maybe' is not one of" in bad.stderr
    assert _run(script, env={"FASTDROP_HUGEPAGES": ""}).stdout.strip() == str(sys.platform.startswith("linux"))


def test_dropout_matmul_backward_masks_come_from_the_output_cache(monkeypatch):
    # mask_pair (the backward's one Philox pass over the operand and its gradient) takes its two
    # large outputs as `mask` does: pooled blocks, not torch's fresh allocations
    monkeypatch.setattr(_alloc, "MIN_BYTES", 1 << 16)  # pool outputs at this test's sizes
    a = torch.randn(4, 256, 256, requires_grad=True)   # 2^18 elements: the parallel mask_pair
    b = torch.randn(256, 8, requires_grad=True)  # (its gradient needs the masked a: the pair)
    before = _alloc.cache_stats()
    pooled = []
    real = _alloc.empty_like
    monkeypatch.setattr(_alloc, "empty_like", lambda x: pooled.append(tuple(x.shape)) or real(x))
    monkeypatch.setattr(fastdrop._core, "_pooled_empty_like", _alloc.empty_like)
    y = fastdrop.dropout_matmul(a, b, 0.3, seed=4)
    pooled.clear()
    y.backward(torch.ones_like(y))
    assert pooled.count((4, 256, 256)) >= 2, pooled
    after = _alloc.cache_stats()
    assert after["hits"] + after["misses"] >= before["hits"] + before["misses"] + 2
    ref_mask = torch.from_numpy(fastdrop.dropout_mask(a.shape, 0.3, 4))
    with torch.no_grad():
        torch.testing.assert_close(a.grad, torch.where(ref_mask, (torch.ones(4, 256, 8) @ b.T) / 0.7, 0.0))
