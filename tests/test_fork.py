"""Fork safety: a process that has run parallel kernels forks children (multiprocessing "fork",
DataLoader workers) that run every public op again and get the parent's bits.

Numba's GNU-OpenMP pool is not fork-safe: Numba kills a forked child's first parallel kernel
("fork() called from a process already using GNU OpenMP, this is unsafe"), and when torch's ops
started the team (one libgomp for both, docs/threads.md) the child's kernel hangs instead.
kernels/config.py routes such a child to each kernel's serial twin; the mask is a pure function of the element
index, so the results must be bit-identical. A hung child fails the test through a timeout.
"""
import multiprocessing
import os
import subprocess
import sys
import traceback

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop.kernels import config, dropout_cpu, linear_cpu, max_norm_cpu

torch = pytest.importorskip("torch")

TIMEOUT_S = 300  # cold serial compiles on a busy 2-core machine take tens of seconds; a hang never ends
BIG = config.CPU_PARALLEL_MIN * 2  # elements: above the elementwise parallel threshold
BIG_MASK = config.DENSE_PARALLEL_MIN  # dense layers' masks run on the pool from here
# The parallel kernels `_ops` reaches through the public API (a kernel the API no longer calls,
# such as linear_cpu.mask_pair once the dense layers mask with dropout_cpu's kernels, is not listed).
REACHED = {"keep_mask", "dropout_flat", "dropout_flat_inplace", "dropout_strided", "dropout_tiled", "dropout_tiled_at",
           "apply_group_mask", "apply_group_mask_inner", "dropout_groups_flat", "dropout_groups_flat_at",
           "dropout_groups_inner_at", "zero_dropped_runs_at",
           "philox4x32_array",
           "dropconnect_sample_fwd", "dropconnect_sample_bwd", "dropout_samples", "dropout_pair",
           "max_norm_rows", "max_norm_cols"}


def _ops(seed):
    """Every public op on fixed inputs with explicit seeds (seed + k), as name -> numpy array.

    torch runs on one thread here, in the parent as in the children (DataLoader workers use one):
    the GEMMs around the masks then sum in the same order everywhere."""
    rng = np.random.default_rng(1234)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        x8 = f32(8, 8)
        out["dropout"] = fastdrop.dropout(x8, 0.5, seed=seed)
        out["dropout_transposed"] = fastdrop.dropout(x8.T, 0.3, seed=seed + 1)  # dropout_tiled
        out["dropout_strided"] = fastdrop.dropout(x8[:, ::2], 0.3, seed=seed + 1)  # no unit stride
        out["dropout_channels_last_big"] = fastdrop.dropout(torch.from_numpy(  # dropout_tiled_at
            f32(2, 64, 32, BIG // 4096)).contiguous(memory_format=torch.channels_last), 0.3, seed=seed + 1).numpy()
        out["dropout_transposed_big"] = fastdrop.dropout(f32(BIG // 256, 256).T, 0.3, seed=seed + 1)  # dropout_tiled
        out["dropout_big"] = fastdrop.dropout(f32(BIG // 256, 256), 0.5, seed=seed + 2)
        out["dropout_big_inplace"] = fastdrop.dropout(f32(BIG // 256, 256), 0.5, seed=seed + 2, inplace=True)
        big = torch.from_numpy(f32(BIG // 256, 256)).requires_grad_()
        y = fastdrop.dropout(big, 0.2, seed=seed + 3)
        y.backward(torch.ones_like(y))
        out["dropout_big_torch"], out["dropout_big_torch_grad"] = y.detach().numpy(), big.grad.numpy()
        out["dropout1d"] = fastdrop.dropout1d(f32(4, 3, 5), 0.5, seed=seed + 4)
        out["dropout2d"] = fastdrop.dropout2d(f32(2, 3, 4, 5), 0.5, seed=seed + 5)
        out["dropout2d_torch"] = fastdrop.dropout2d(torch.from_numpy(f32(2, 3, 4, 5)), 0.5,
                                                    seed=seed + 6).numpy()
        out["dropout3d"] = fastdrop.dropout3d(f32(2, 3, 2, 3, 4), 0.5, seed=seed + 7)
        channels_last = torch.from_numpy(f32(2, 3, 4, 5)).contiguous(memory_format=torch.channels_last)
        out["dropout2d_channels_last"] = fastdrop.dropout2d(channels_last, 0.5, seed=seed + 6).numpy()
        c_major = np.ascontiguousarray(f32(2, 3, 4, 5).transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        out["dropout2d_c_major"] = fastdrop.dropout2d(c_major, 0.5, seed=seed + 6)  # apply_group_mask
        # numpy memory (N, H, W, C) seen as (N, C, H, W): apply_group_mask_inner; and under autograd
        # the native route's zero pass
        cl_numpy = np.ascontiguousarray(f32(2, 16, 8, BIG // 256).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        out["dropout2d_channels_last_numpy"] = fastdrop.dropout2d(cl_numpy, 0.5, seed=seed + 6)
        runs = torch.from_numpy(f32(8, 16, 512)).requires_grad_()
        out["dropout1d_native"] = fastdrop.dropout1d(runs, 0.3, seed=seed + 6).detach().numpy()  # zero_dropped_runs_at
        out["dropout_mask"] = fastdrop.dropout_mask((8, 8), 0.5, seed + 8)
        out["philox4x32"] = fastdrop.philox4x32(rng.integers(0, 2**32, (16, 4), dtype=np.uint32),
                                                [seed, 7])

        def fwd_bwd(name, fn, *shapes):
            args = [torch.from_numpy(f32(*s)).requires_grad_() for s in shapes]
            y = fn(*args)
            y.backward(torch.from_numpy(f32(*y.shape)))
            out[name] = y.detach().numpy()
            for i, a in enumerate(args):
                out[f"{name}_grad{i}"] = a.grad.numpy()

        fwd_bwd("dropout_linear", lambda x, w, b: fastdrop.dropout_linear(x, w, b, 0.3, seed=seed + 9),
                (16, 32), (24, 32), (24,))
        fwd_bwd("dropout_linear_big", lambda x, w: fastdrop.dropout_linear(x, w, None, 0.3, seed=seed + 10),
                (BIG_MASK // 1024, 1024), (8, 1024))
        out["dropout_linear_numpy"] = fastdrop.dropout_linear(f32(16, 32), f32(24, 32), f32(24), 0.3,
                                                              seed=seed + 11)
        fwd_bwd("dropconnect", lambda x, w, b: fastdrop.dropconnect_linear(x, w, b, 0.5, seed=seed + 12),
                (16, 32), (24, 32), (24,))
        fwd_bwd("dropconnect_big", lambda x, w: fastdrop.dropconnect_linear(x, w, None, 0.5, seed=seed + 13),
                (4, 1024), (BIG_MASK // 1024, 1024))
        fwd_bwd("dropconnect_per_sample", lambda x, w, b: fastdrop.dropconnect_linear(
            x, w, b, 0.5, seed=seed + 14, per_sample=True), (6, 40), (24, 40), (24,))
        out["dropconnect_numpy"] = fastdrop.dropconnect_linear(f32(16, 32), f32(24, 32), None, 0.5,
                                                               seed=seed + 15)
        out["drop_path"] = fastdrop.drop_path(f32(8, 5, 6), 0.5, seed=seed + 16)
        fwd_bwd("drop_path_torch", lambda x: fastdrop.drop_path(x, 0.5, seed=seed + 17), (8, 5, 6))
        fwd_bwd("dropout_matmul", lambda a, b: fastdrop.dropout_matmul(a, b, 0.3, seed=seed + 18),
                (2, 8, 16), (16, 4))
        out["dropout_matmul_numpy"] = fastdrop.dropout_matmul(f32(2, 8, 16), f32(16, 4), 0.3, seed=seed + 19)
        w = f32(32, 48) * 3
        out["max_norm_rows"] = fastdrop.max_norm_(w.copy(), 2.0)
        out["max_norm_cols"] = fastdrop.max_norm_(w.copy(), 2.0, dim=0)

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = torch.nn.Sequential(
                torch.nn.Linear(16, 256), torch.nn.ReLU(), fastdrop.nn.Dropout(0.3),
                fastdrop.nn.DropoutLinear(256, 256, p=0.2), torch.nn.ReLU(),
                fastdrop.nn.Dropout(0.5), torch.nn.Linear(256, 5))
            x = torch.from_numpy(f32(256, 16))
            out["model_train"] = model(x).detach().numpy()  # seed=None: masks from torch's generator
            out["dropconnect_module"] = fastdrop.nn.DropConnectLinear(16, 8, p=0.2)(x).detach().numpy()
            out["dropout2d_module"] = fastdrop.nn.Dropout2d(0.5)(torch.from_numpy(f32(2, 3, 4, 5))).numpy()
            model.eval()
            # 33: sample 0 alone, then one chunk of 32 (32 * 256 * 256 = 2**21: the parallel mask kernel)
            r = fastdrop.mc_predict(model, x, samples=33, seed=seed + 20, logits=True)
        for field in ("mean", "var", "entropy", "mutual_info"):
            out[f"mc_predict_{field}"] = getattr(r, field).numpy()
        return {k: np.ascontiguousarray(v) for k, v in out.items()}
    finally:
        torch.set_num_threads(threads)


def _assert_same_bits(got, expected, where):
    assert got.keys() == expected.keys(), where
    for name, e in expected.items():
        g = got[name]
        assert (g.dtype, g.shape) == (e.dtype, e.shape), f"{where}: {name}"
        assert g.tobytes() == e.tobytes(), f"{where}: {name} differs from the parent's"


@pytest.fixture(scope="module")
def parent_results():
    """The parent's results; computing them starts Numba's pool (calls above the thresholds)."""
    res = {seed: _ops(seed) for seed in (0, 100, 200, 300)}
    numba.threading_layer()  # raises if no parallel kernel ran: the test would prove nothing
    return res


def _child(conn, seed):
    try:
        res = _ops(seed)
        serial_ran = {k.__qualname__ for k in config._KERNELS if k.serial.signatures}
        conn.send(("ok", res, config._forked_serial, serial_ran))
    except BaseException:
        conn.send(("error", traceback.format_exc(), None, None))
    finally:
        conn.close()


def test_forked_children_run_every_op_bit_identical_to_the_parent(parent_results):
    ctx = multiprocessing.get_context("fork")
    children = []
    for seed in (0, 100):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(send, seed))
        p.start()
        send.close()
        children.append((seed, p, recv))
    try:
        for seed, p, recv in children:
            assert recv.poll(TIMEOUT_S), f"child {seed} sent nothing in {TIMEOUT_S} s (exit code {p.exitcode})"
            try:
                status, res, forked_serial, serial_ran = recv.recv()
            except EOFError:  # the pipe closed without a message: the child died
                p.join(TIMEOUT_S)
                pytest.fail(f"child {seed} died before sending its results (exit code {p.exitcode})")
            assert status == "ok", res
            p.join(TIMEOUT_S)
            assert p.exitcode == 0, f"child {seed} exited with {p.exitcode}"
            _assert_same_bits(res, parent_results[seed], f"forked child {seed}")
            unsafe = config._pool_unsafe_after_fork()  # True with Numba's default layer (GNU OpenMP)
            assert forked_serial == unsafe
            if unsafe:  # the parallel kernels the ops reach ran in the child as serial twins
                assert REACHED <= serial_ran, f"no serial run in the child: {REACHED - serial_ran}"
    finally:
        for _, p, _ in children:
            if p.is_alive():
                p.kill()


class _OpsDataset(torch.utils.data.Dataset):
    seeds = (0, 100, 200, 300)

    def __len__(self):
        return len(self.seeds)

    def __getitem__(self, i):
        return _ops(self.seeds[i])


def test_dataloader_fork_workers_run_every_op_bit_identical(parent_results):
    loader = torch.utils.data.DataLoader(_OpsDataset(), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork", timeout=TIMEOUT_S)
    got = list(loader)  # a killed worker raises "DataLoader worker ... exited unexpectedly"
    assert len(got) == len(_OpsDataset.seeds)
    for seed, item in zip(_OpsDataset.seeds, got):
        _assert_same_bits({k: v.numpy() for k, v in item.items()}, parent_results[seed],
                          f"DataLoader item {seed}")


class _SeedNoneDataset(torch.utils.data.Dataset):
    """numpy dropout with seed=None: fastdrop's numpy source, which forked workers inherit."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return fastdrop.dropout(np.ones(256, np.float32), 0.5)


def _seed_none_epochs(epochs=2):
    out = []
    for _ in range(epochs):
        loader = torch.utils.data.DataLoader(_SeedNoneDataset(), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork", timeout=TIMEOUT_S)
        out.append([item.numpy() != 0 for item in loader])
    return out


def test_forked_workers_draw_their_own_numpy_seeds():
    """Workers inherit the parent's numpy seed source; each re-seeds it from its DataLoader worker
    seed (new every epoch) on its first draw: no two items of two epochs share a mask, and the
    same fastdrop.manual_seed + torch.manual_seed in the parent give the same masks again."""
    runs = []
    for _ in range(2):
        fastdrop.manual_seed(5)
        torch.manual_seed(6)
        runs.append(_seed_none_epochs())
    masks = [m for epoch in runs[0] for m in epoch]
    assert len(masks) == 8
    assert not any(np.array_equal(masks[i], masks[j]) for i in range(8) for j in range(i))
    for a, b in zip(runs[0], runs[1]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    # a bare fork: the child's draws differ from the parent's next ones
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, fastdrop.dropout(np.ones(256, np.float32), 0.5).tobytes())
        os._exit(0)
    os.close(w)
    child = np.frombuffer(_read_all(r), np.float32)
    os.waitpid(pid, 0)
    assert not np.array_equal(child, fastdrop.dropout(np.ones(256, np.float32), 0.5))


def test_spawned_workers_draw_numpy_seeds_from_their_worker_seed():
    """A worker started by spawn (macOS's and Windows' default) imports fastdrop afresh, with OS
    entropy: its first draw re-seeds from its DataLoader worker seed, so the parent's
    torch.manual_seed gives the same masks again, and workers and epochs differ (before, every
    spawned worker drew from OS entropy: no run was reproducible)."""
    def run():
        torch.manual_seed(6)
        out = []
        for _ in range(2):
            loader = torch.utils.data.DataLoader(_SeedNoneDataset(), batch_size=None, num_workers=2,
                                                 multiprocessing_context="spawn", timeout=TIMEOUT_S)
            out += [item.numpy() != 0 for item in loader]
        return out
    first, second = run(), run()
    assert len(first) == 8
    assert not any(np.array_equal(first[i], first[j]) for i in range(8) for j in range(i))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


_UNSEEDED_WORKERS = """
import hashlib, numpy as np, torch, fastdrop
class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return fastdrop.dropout(np.ones(256, np.float32), 0.5)
if __name__ == "__main__":
    torch.manual_seed(6)
    masks = []
    for _ in range(2):
        loader = torch.utils.data.DataLoader(Data(), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork", timeout=300)
        masks += [(item.numpy() != 0).tobytes() for item in loader]
    print(len(set(masks)), hashlib.sha256(b"".join(masks)).hexdigest())
"""


def test_forked_workers_of_an_unseeded_parent_follow_torch_manual_seed(tmp_path):
    """Without fastdrop.manual_seed the numpy source is OS entropy, which forked workers inherited:
    their seed=None masks differed from run to run whatever torch.manual_seed said. Each worker now
    re-seeds from its worker seed alone: two fresh processes with the same torch.manual_seed give
    the same 8 masks (2 workers x 2 items x 2 epochs), all distinct."""
    script = tmp_path / "unseeded_workers.py"
    script.write_text(_UNSEEDED_WORKERS)
    runs = [subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT_S,
                           check=True).stdout.split() for _ in range(2)]
    assert runs[0][0] == "8"
    assert runs[0] == runs[1]


_WORKER_CHILDREN = """
import os, numpy as np, torch, fastdrop
def mask():
    return fastdrop.dropout(np.ones(32, np.float32), 0.5)
def in_child():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, mask().tobytes())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    return np.frombuffer(data, np.float32)
class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, i):
        return np.stack([mask(), in_child(), mask(), in_child()])
if __name__ == "__main__":
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Data(), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork", timeout=300)
    print(len({m.tobytes() for m in next(iter(loader)).numpy()}))
"""


def test_children_of_an_unseeded_worker_draw_their_own_masks(tmp_path):
    """A worker's own forked children (a pool inside __getitem__) inherit its worker info: they
    re-seeded from the worker seed alone and repeated the worker's stream, every child the same
    masks. They re-seed from the inherited state and their place in the fork tree: the worker's
    two draws and its two children's are four different masks."""
    script = tmp_path / "worker_children.py"
    script.write_text(_WORKER_CHILDREN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT_S,
                         check=True).stdout.split()
    assert out == ["4"]


_FORK_TREE = """
import hashlib, os, sys
import numpy as np
import fastdrop

def mask_hash():
    return hashlib.md5((fastdrop.dropout(np.ones(256, np.float32), 0.5) != 0).tobytes()).hexdigest()[:12]

def child(w, depth):
    if depth:  # a grandchild forked before the child's own first draw, then the child's draw
        grand(w)
    os.write(w, (mask_hash() + "\\n").encode())
    os._exit(0)

def grand(w):
    pid = os.fork()
    if pid == 0:
        os.write(w, ("g" + mask_hash() + "\\n").encode())
        os._exit(0)
    os.waitpid(pid, 0)

fastdrop.manual_seed(int(sys.argv[1]))
r, w = os.pipe()
for depth in (1, 0):
    pid = os.fork()
    if pid == 0:
        child(w, depth)
    os.waitpid(pid, 0)
os.close(w)
print(os.read(r, 1 << 16).decode().split(), mask_hash())
"""


def test_forked_children_masks_follow_fastdrop_manual_seed(tmp_path):
    """Forked children (not DataLoader workers: a multiprocessing fork pool, a pre-fork server)
    re-seed from the inherited source and their place in the fork tree, so the parent's
    fastdrop.manual_seed reproduces their masks run after run; they were keyed on the pid, which
    differs every run (a review on 2026-12-06). Children, a grandchild forked before its parent's
    first draw, and the parent all draw different masks."""
    script = tmp_path / "fork_tree.py"
    script.write_text(_FORK_TREE)
    runs = [subprocess.run([sys.executable, str(script), seed], capture_output=True, text=True,
                           timeout=TIMEOUT_S, check=True).stdout for seed in ("3", "3", "4")]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    masks = [m.strip("[]',g") for m in runs[0].split()]
    assert len(masks) == 4 and len(set(masks)) == 4, runs[0]


def test_an_undo_in_a_forked_child_keeps_the_child_s_own_stream():
    """A call that fails after its seed=None draw gives the draw back (`_seeds.draw_numpy_seed_undoably`);
    if the failing call forked, the child's undo restored the parent's source as it was: parent
    and child then drew the same seeds. The fork counts as an event of the source: no restore."""
    from fastdrop import _seeds
    fastdrop.manual_seed(7)
    _, undo = _seeds.draw_numpy_seed_undoably()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            undo()
            os.write(w, str(_seeds.draw_numpy_seed()).encode())
        finally:
            os._exit(0)
    os.close(w)
    undo()
    child = int(_read_all(r))
    os.waitpid(pid, 0)
    assert child != _seeds.draw_numpy_seed()


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)


# The parent's side of the child scripts below: wait for the child pid, kill it and fail past
# {timeout} seconds (a hang never ends)
WAIT_FOR_CHILD = """
deadline = time.time() + {timeout}
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    raise SystemExit("the child hung")
"""

# A parent that ran only torch's ops: torch's OpenMP region starts the GNU OpenMP team that Numba's
# omp layer shares (docs/threads.md), though Numba's own pool never started. Before the fork hook
# counted that team, the child's first parallel kernel waited for the team's missing threads forever.
TORCH_PARENT_CHILD = """
import os, time, numba, numpy as np, torch, fastdrop
from fastdrop.kernels import config
x = torch.randn(1 << 21)
(x * 2).sum()  # torch's parallel region: the OpenMP team starts in the parent
fastdrop._cpu.CPU_PARALLEL_MIN = 1 << 62  # the parent's reference on the serial kernels: no Numba pool
want = fastdrop.dropout2d(np.ones((8, 64, 32, {w}), np.float32), 0.5, seed=3).tobytes()
fastdrop._cpu.CPU_PARALLEL_MIN = config.CPU_PARALLEL_MIN
try:
    numba.threading_layer()
    raise SystemExit("Numba's pool started in the parent: this test needs it asleep")
except ValueError:
    pass
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    y = fastdrop.dropout2d(np.ones((8, 64, 32, {w}), np.float32), 0.5, seed=3)  # a parallel kernel's size
    os.write(w, b"serial " if config._forked_serial else b"parallel ")
    os.write(w, b"same" if y.tobytes() == want else b"different")
    os._exit(0)
""" + WAIT_FOR_CHILD + """os.close(w)
print(os.read(r, 100).decode(), os.waitstatus_to_exitcode(status))
"""


def test_child_of_a_torch_parent_runs_serial_twins_instead_of_hanging():
    """torch's OpenMP team counts like Numba's pool: the child runs the serial twins, same bits."""
    code = TORCH_PARENT_CHILD.format(w=BIG // (8 * 64 * 32) + 1, timeout=TIMEOUT_S - 60)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["serial", "same", "0"], r.stdout + r.stderr


# A parent that ran only fastdrop's kernels, on numpy data: Numba's pool started the GNU OpenMP
# team torch shares. In the child, torch's own parallel regions inside fastdrop's torch ops (the
# dense layers' GEMMs, mc_predict's stacking) waited for the team's missing threads forever, where
# without fastdrop the child would have had no team (helper hunt, 2026-12-06).
FASTDROP_PARENT_CHILD = """
import os, time, numpy as np, torch, fastdrop
import fastdrop.nn as fnn

def work():
    model = torch.nn.Sequential(fnn.Dropout(0.5)).eval()
    r = fastdrop.mc_predict(model, torch.ones(64, 2048), samples=32, seed=1)
    w = torch.randn(512, 512, generator=torch.Generator().manual_seed(0), requires_grad=True)
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))
    y = fastdrop.dropout_linear(x, w, None, 0.3, seed=5)
    g, = torch.autograd.grad(y.sum(), w)
    return r.mean.numpy().tobytes() + y.detach().numpy().tobytes() + g.numpy().tobytes()

torch.set_num_threads(1)
want = work()  # the reference on one torch thread, before any parallel region
torch.set_num_threads(2)
fastdrop.dropout(np.ones({big}, np.float32), 0.5, seed=0)  # a parallel kernel: Numba's pool
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    same = work() == want
    os.write(w, f"{{torch.get_num_threads()}} {{'same' if same else 'different'}}".encode())
    os._exit(0)
""" + WAIT_FOR_CHILD + """os.close(w)
print(os.read(r, 100).decode(), os.waitstatus_to_exitcode(status))
"""


def test_child_of_a_fastdrop_parent_runs_torch_ops_on_one_thread_instead_of_hanging():
    """The fork hook sets torch to one thread in a child whose parent's team is Numba's (as
    DataLoader workers run torch): fastdrop's torch ops there finish, with the parent's bits."""
    code = FASTDROP_PARENT_CHILD.format(big=BIG, timeout=TIMEOUT_S - 60)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["1", "same", "0"], r.stdout + r.stderr


def test_child_importing_torch_after_the_fork_runs_it_on_one_thread():
    """The same for a parent that never imported torch (numpy only): the child's first import of
    torch goes through fastdrop's import hook, which sets the one thread there (a review found the
    fork-time hook alone left such a child hanging at its first torch parallel region)."""
    code = (
        "import os, sys, time, numpy as np, fastdrop\n"
        f"fastdrop.dropout(np.ones({BIG}, np.float32), 0.5, seed=0)\n"
        "assert 'torch' not in sys.modules\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import torch\n"
        "    y = fastdrop.dropout_linear(torch.randn(64, 256), torch.randn(256, 256, requires_grad=True), None,"
        " 0.3, seed=5)\n"
        "    y.sum().backward()\n"
        "    torch.randn(1 << 22).exp()\n"
        "    os.write(w, str(torch.get_num_threads()).encode())\n"
        "    os._exit(0)\n"
        + WAIT_FOR_CHILD.format(timeout=TIMEOUT_S - 60) +
        "os.close(w)\n"
        "print(os.read(r, 100).decode(), os.waitstatus_to_exitcode(status))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["1", "0"], r.stdout + r.stderr


def test_child_of_a_process_without_a_pool_stays_parallel():
    """Only a possible GNU OpenMP team makes a child serial: a fork before any parallel kernel
    ran, in a process where no OpenMP runtime is loaded, keeps the parallel kernels (and the child
    may start its own pool)."""
    code = (
        "import os, numba, numpy as np, fastdrop\n"
        "from fastdrop.kernels import config\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    y = fastdrop.dropout(np.ones({BIG}, np.float32), 0.5, seed=1)\n"
        "    os._exit(0 if not config._forked_serial and numba.threading_layer() else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr


# A child forked while another parent thread holds a lock the child's first call needs: fastdrop's
# output-cache lock (a thread polling cache_stats()), or Numba's compiler lock (a thread compiling
# or loading a kernel; the child loads its serial twins under it). Each is held by the other
# thread at the fork, deterministically; the child must finish, not wait forever.
LOCK_HELD_AT_FORK = """
import os, threading, time, numpy as np, torch, fastdrop
from fastdrop import _alloc
from numba.core.compiler_lock import global_compiler_lock
big = torch.ones({big})  # pooled output size: the child's call takes the cache's lock
want = fastdrop.dropout(big, 0.5, seed=1).numpy().tobytes()
lock = {{"cache": _alloc._lock, "compiler": global_compiler_lock}}["{which}"]
held = threading.Event()
def hold():
    with lock:
        held.set()
        time.sleep(0.5)
threading.Thread(target=hold).start()
held.wait()
pid = os.fork()  # the other thread is inside the lock now
if pid == 0:
    y = fastdrop.dropout(big, 0.5, seed=1).numpy().tobytes()
    os._exit(0 if y == want else 3)
""" + WAIT_FOR_CHILD + """raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("which", ["cache", "compiler"])
def test_child_forked_while_another_thread_holds_a_lock_does_not_hang(which):
    """The fork waits for the other thread to leave the lock (so the child inherits a consistent
    cache and dispatcher state) and the child starts with a free lock. Before, the child inherited
    the lock held by a thread it does not have: its first pooled output, or its first serial-twin
    load, waited forever."""
    from fastdrop import _alloc
    big = _alloc.MIN_BYTES // 4  # float32 elements: a pooled output, above the parallel threshold
    code = LOCK_HELD_AT_FORK.format(big=big, which=which, timeout=TIMEOUT_S - 60)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr


# A child forked while another parent thread launches Numba's thread pool (fastdrop's first
# parallel kernel, numpy only: the child stays parallel). The launch's window (loading the
# threading layer) is widened by a sleep inside it, so the fork lands there deterministically.
FORK_DURING_POOL_LAUNCH = """
import os, sys, threading, time, numpy as np, fastdrop
from numba.np.ufunc import parallel
assert "torch" not in sys.modules
check = parallel._check_tbb_version_compatible
inside = threading.Event()
def slow():  # runs inside _launch_threads, under its launch locks
    inside.set()
    time.sleep(1.0)
    return check()
parallel._check_tbb_version_compatible = slow
x = np.random.rand(1 << 18).astype(np.float32)
t = threading.Thread(target=lambda: fastdrop.dropout(x, 0.3, seed=1))
t.start()
inside.wait()
pid = os.fork()
if pid == 0:
    os._exit(0 if parallel._backend_init_thread_lock.acquire(timeout=5) else 3)
t.join()
""" + WAIT_FOR_CHILD + """raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_child_forked_during_the_pool_launch_gets_free_launch_locks():
    """The pool's launch runs under the compiler lock the fork hook holds, so a fork waits for it
    to end: the child inherits Numba's launch locks free. Before, a child forked inside another
    thread's launch inherited them held by a thread it does not have: its first parallel kernel
    waited forever, and the parent's next launch waited on the process-shared lock with it (a
    review)."""
    code = FORK_DURING_POOL_LAUNCH.format(timeout=TIMEOUT_S - 60)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the decorator itself --------------------------------------------------------------------

def test_parallel_kernels_carry_a_serial_twin_with_its_own_cache_entry():
    k = dropout_cpu.keep_mask
    assert isinstance(k, config.CpuKernel) and k in config._KERNELS
    assert k.serial.targetoptions["parallel"] is False
    assert k.serial.py_func.__code__ is k.parallel.py_func.__code__
    assert k.serial.py_func.__qualname__ == "keep_mask.serial"
    # Numba's disk cache names entries by module, qualname and first line only
    line = k.py_func.__code__.co_firstlineno
    assert k.serial._cache._cache_file._index_name.startswith(f"dropout_cpu.keep_mask.serial-{line}.")
    assert k.parallel._cache._cache_file._index_name.startswith(f"dropout_cpu.keep_mask-{line}.")
    assert k.signatures == k.parallel.signatures and k.__doc__ == k.parallel.py_func.__doc__
    # extra njit options reach both variants
    assert max_norm_cpu.max_norm_rows.serial.targetoptions["fastmath"] == \
        max_norm_cpu.max_norm_rows.parallel.targetoptions["fastmath"]
    assert isinstance(max_norm_cpu.max_norm_rows, config.CpuKernel)
    # hand-written serial kernels stay plain dispatchers: njit code calls them
    assert isinstance(dropout_cpu.dropout_flat_serial, numba.core.registry.CPUDispatcher)


def test_serial_twin_gives_the_parallel_kernels_bits():
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    outs = []
    for kern in (dropout_cpu.dropout_flat.parallel, dropout_cpu.dropout_flat.serial):
        out = np.empty_like(x)
        kern(x, out, np.uint64(5), np.uint64(0), np.uint64(3), np.uint64(0),
             np.uint32(fastdrop.keep_threshold(0.4)), np.float32(1 / 0.6))
        outs.append(out)
    assert outs[0].tobytes() == outs[1].tobytes()


def test_cpu_kernel_rejects_bad_arguments():
    with pytest.raises(TypeError, match="parallel must be a bool"):
        config.cpu_kernel(parallel="yes")
    with pytest.raises(TypeError, match="Python function"):
        config.cpu_kernel(len)


def test_no_njit_code_calls_a_cpu_kernel_object():
    """A CpuKernel is a Python object that Numba cannot type: a kernel calling one would fail to
    compile. Kernels that njit code calls must be parallel=False (plain dispatchers)."""
    import fastdrop.kernels as pkg
    import importlib
    import pkgutil
    offenders = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith("_cuda"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            fns = ([obj.parallel, obj.serial] if isinstance(obj, config.CpuKernel) else
                   [obj] if isinstance(obj, numba.core.registry.CPUDispatcher) else [])
            for d in fns:
                for called in d.py_func.__code__.co_names:
                    if isinstance(d.py_func.__globals__.get(called), config.CpuKernel):
                        offenders.append(f"{info.name}.{name} -> {called}")
    assert offenders == []
