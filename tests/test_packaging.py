"""What a non-editable install (`pip install .`, a wheel) ships. The tests import fastdrop from the
checkout through the editable finder, which maps the whole folder, so a subpackage missing from
pyproject.toml's package list passed every other test while a wheel lacked it (fastdrop.nn, until
2026-12-07: no modules, no mc_predict)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sources():
    """The .py files a wheel must hold, by their installed paths: fastdrop/ and kernels/ (installed
    as fastdrop/kernels through the package-dir mapping)."""
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fastdrop").rglob("*.py")
             if "kernels" not in p.relative_to(ROOT / "fastdrop").parts}
    files |= {"fastdrop/kernels/" + p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels").rglob("*.py")}
    return files


def test_wheel_holds_every_module(tmp_path):
    pytest.importorskip("setuptools", reason="the build backend pyproject.toml names (installed with the project)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "kernels", src / "kernels", ignore=ignore)
    shutil.copytree(ROOT / "fastdrop", src / "fastdrop", ignore=ignore, symlinks=True)
    link = src / "fastdrop" / "kernels"  # a checkout's convenience link, if any: the mapping installs kernels/
    if link.is_symlink():
        link.unlink()
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (wheel,) = (tmp_path / "dist").glob("fastdrop-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    missing = _sources() - shipped
    assert not missing, f"the wheel lacks {sorted(missing)}: list their packages in pyproject.toml"
    assert "fastdrop/nn/__init__.py" in shipped and "fastdrop/kernels/philox.py" in shipped
