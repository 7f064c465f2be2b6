"""`import fastdrop` is light: no torch, no numba.cuda; the numpy API works with torch absent."""
import os
import subprocess
import sys

SCRIPT_NO_TORCH = """
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
import numpy as np, fastdrop
y = fastdrop.dropout(np.ones((4, 5), np.float32), 0.5, seed=1)
assert (y == np.where(fastdrop.dropout_mask((4, 5), 0.5, 1), 2.0, 0.0)).all()
sys.path.insert(0, TESTS)
from op_table import CASES  # every op on numpy operands (per-sample DropConnect's kernels too)
rng = np.random.default_rng(0)
for name, case in CASES.items():
    ops = [rng.standard_normal(shape) for shape in case.shapes if shape is not None]
    case.call(*ops, seed=3)
try:
    fastdrop.nn
except ImportError:
    print('ok')
"""

SCRIPT_LIGHT = """
import sys, fastdrop
print(sorted(m for m in ('torch', 'numba.cuda') if m in sys.modules))
"""


def _run(script):
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_numpy_api_without_torch():
    res = _run(f"TESTS = {os.path.dirname(os.path.abspath(__file__))!r}\n" + SCRIPT_NO_TORCH)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_import_loads_neither_torch_nor_cuda():
    res = _run(SCRIPT_LIGHT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


SCRIPT_MARKED = """
import sys
if sys.argv[1] == "fastdrop-first":
    import fastdrop, fastdrop.nn  # torch loads inside fastdrop.nn's import: marked by its last line
else:
    import torch, fastdrop, fastdrop.nn
import torch
from torch._dynamo.utils import counters
from fastdrop import _core, _checks
from fastdrop.kernels import philox
convert, mc = sys.modules["fastdrop.nn.convert"], sys.modules["fastdrop.nn.mc"]

def frames_compiled(fn, *args):
    before = counters["frames"]["total"]
    torch.compile(fn, backend="eager")(*args)
    return counters["frames"]["total"] - before

internal = [(convert._replacement, torch.nn.Dropout(0.1)), (_core._seed_int, 5), (_checks.check_p, 0.5),
            (philox.keep_threshold, 0.5), (mc._scale, 0.5, "inverted")]
print([frames_compiled(f, *a) for f, *a in internal], frames_compiled(fastdrop.keep_threshold, 0.5))
"""


def test_internal_code_is_marked_for_dynamo_whatever_the_import_order():
    """keep_dynamo_out (fastdrop/_dynamo_skip.py) marks fastdrop's internal code so Dynamo never compiles one
    of its frames on its own: torch.compile of an internal function compiles no frame, of a public
    one a frame; whether torch loads before fastdrop or inside fastdrop.nn's import (then
    fastdrop.nn.convert is still importing when torch's ops register)."""
    for order in ("fastdrop-first", "torch-first"):
        res = subprocess.run([sys.executable, "-c", SCRIPT_MARKED, order], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "[0, 0, 0, 0, 0] 1", (order, res.stdout)


SCRIPT_PROBED = """
import importlib.util, sys
import fastdrop
assert importlib.util.find_spec("torch") is not None  # transformers' is_torch_available(), twice
assert importlib.util.find_spec("torch") is not None
import torch
print(hasattr(torch.ops.fastdrop, "dropout"), hasattr(torch.ops.fastdrop, "draw_seed"),
      [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "TorchImportHook"])
"""


def test_a_probe_for_torch_before_its_import_keeps_the_registration_hook():
    """importlib.util.find_spec("torch") between `import fastdrop` and `import torch` (libraries'
    is-torch-available checks) took the one-shot hook off sys.meta_path with a spec that never ran,
    so torch's import registered no fastdrop op and a saved torch.export program failed to load (a
    review). The ops register when torch runs, and the hook leaves then."""
    res = _run(SCRIPT_PROBED)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True True []"


SCRIPT_NO_CACHE = """
import warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastdrop
assert not fastdrop.kernels.config.DISK_CACHE
print([str(w.message)[:60] for w in caught if "no writable cache" in str(w.message)])
y = fastdrop.dropout(np.ones((4, 5), np.float32), 0.5, seed=1)
assert (y == np.where(fastdrop.dropout_mask((4, 5), 0.5, 1), 2.0, 0.0)).all()
"""


def test_no_writable_kernel_cache_compiles_in_process_with_a_warning():
    """Where Numba finds no writable place for the kernels' cache (a read-only install and HOME;
    here every locator but the zip-import one switched off through Numba's own setting), cache=True
    made `import fastdrop` raise "cannot cache function ... no locator available" (a review). The
    kernels compile without the disk cache, and one warning names NUMBA_CACHE_DIR."""
    res = subprocess.run([sys.executable, "-c", SCRIPT_NO_CACHE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['fastdrop: Numba finds no writable cache directory for fastdr']"


SCRIPT_NO_NUMBA_CUDA = """
import sys
sys.modules['numba_cuda'] = None  # not installed: numba-cuda is an extra (no macOS wheel)
import numpy as np, fastdrop
from fastdrop import _seeds


class DeviceArray:  # what fastdrop reads of a CUDA array: its interface
    __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (1 << 20, False), "version": 3}


state = _seeds._numpy_source.bit_generator.state
try:
    fastdrop.dropout(DeviceArray(), 0.5)
except RuntimeError as e:
    print("fastdrop[cuda12]" in str(e), _seeds._numpy_source.bit_generator.state == state)
print(fastdrop.dropout(np.ones(4, np.float32), 0.5, seed=1).shape)
"""


def test_cuda_data_without_numba_cuda_names_the_extra():
    """numba-cuda is an extra (it has no macOS wheel, and the CPU kernels need numba alone: a
    review); CUDA data without it gets a RuntimeError naming the extras, before the seed draw; the
    CPU API works."""
    res = _run(SCRIPT_NO_NUMBA_CUDA)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["True True", "(4,)"]


SCRIPT_STAR_WITHOUT_TORCH = """
import sys
sys.modules['torch'] = None
import fastdrop
from fastdrop import *
print('nn' in fastdrop.__all__, callable(dropout))
for use in (lambda: fastdrop.nn, lambda: fastdrop.mc_predict, lambda: fastdrop.register_torch_ops(),
            lambda: fastdrop.max_norm_hook(None, [], 1.0)):
    try:
        use()
    except ModuleNotFoundError as e:
        print("fastdrop[torch]" in str(e), e.name)
"""


def test_star_import_and_torch_entry_points_without_torch():
    """Without torch, `from fastdrop import *` failed on `nn` in __all__, and the torch-only entry
    points said only "No module named 'torch'" (a review): the star import gives the numpy API,
    and each entry point names the extra."""
    res = _run(SCRIPT_STAR_WITHOUT_TORCH)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"] + ["True", "torch"] * 4


SCRIPT_NO_JIT = """
import numpy as np, fastdrop
assert fastdrop.dropout_mask((2, 3), 0.5, 1).shape == (2, 3)  # the mask functions run as Python
try:
    fastdrop.dropout(np.ones(8, np.float32), 0.5, seed=1)
except NotImplementedError as e:
    print("NUMBA_DISABLE_JIT=1 turns off" in str(e))
"""


def test_kernels_without_the_jit_say_why():
    """NUMBA_DISABLE_JIT=1 runs the kernels as Python, which reach njit-only helpers: the error said
    only that the helper "runs inside compiled kernels" (a review); it names the variable now."""
    res = subprocess.run([sys.executable, "-c", SCRIPT_NO_JIT], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"
