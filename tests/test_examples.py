"""The examples run, and the digits example shows what examples/README.md says it shows.

Its numbers move by a few tenths with the CPU and the thread count (examples/README.md), so the
checks are the README's qualitative statements, with margins far from today's values."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def test_bench_variants_quick_runs(tmp_path):
    out = _run([str(ROOT / "examples" / "bench_variants.py"), "--quick"], tmp_path)
    assert "speed-up vs torch" in out


def test_digits_example_shows_what_its_readme_says(tmp_path):
    script = tmp_path / "digits_dropout.py"  # (its figure goes next to it: not into the checkout)
    shutil.copy(ROOT / "examples" / "digits_dropout.py", script)
    out = _run([str(script)], tmp_path)
    rows = {m.group(1).strip(): m for m in re.finditer(
        r"^(plain|dropout|dropout classic|dropout\+max-norm)\s+accuracy train ([\d.]+) test ([\d.]+) gap \S+ \| "
        r"cross-entropy train [\d.]+ test [\d.]+ gap \+([\d.]+) \| largest incoming-weight norm ([\d.]+)$", out, re.M)}
    assert set(rows) == {"plain", "dropout", "dropout classic", "dropout+max-norm"}, out
    # dropout halves the train/test cross-entropy gap (0.33 -> 0.17 on the dev VM)
    assert float(rows["dropout"].group(4)) < 0.65 * float(rows["plain"].group(4))
    # max-norm keeps every incoming-weight norm at c = 3
    assert float(rows["dropout+max-norm"].group(5)) <= 3.0
    # MC dropout: more epistemic uncertainty on corrupted inputs (3.1x mutual information, 2.6x entropy)
    m = re.search(r"mean mutual information corrupted / clean: ([\d.]+)x; mean entropy corrupted / clean: ([\d.]+)x",
                  out)
    assert m and float(m.group(1)) > 2.0 and float(m.group(2)) > 1.5, out
    assert (tmp_path / "digits_dropout.png").stat().st_size > 0
