"""The package layout the op-core issue asked for, read from the source's imports (the statements and
`importlib.import_module` calls, at any depth: a lazy import inside a function is a dependency too):
no import circles inside fastdrop/, at most 5 import floors (a subpackage such as fastdrop/nn counts
as one room, as fastdrop/ counts its files), and kernels/ imports nothing of fastdrop/."""
import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastdrop"
MAX_FLOORS = 5


def _room(path):
    """fastdrop/x.py -> "x"; fastdrop/nn/y.py -> "nn"; fastdrop/__init__.py -> "__init__"."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path, pkg=None):
    """Absolute dotted names a file imports (relative imports resolved against its package)."""
    if pkg is None:
        pkg = ".".join(("fastdrop",) + path.relative_to(PACKAGE).parent.parts)
    names = []

    def resolve(module, level):
        if not level:
            return module or ""
        base = pkg.split(".")[:len(pkg.split(".")) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level)
            names += [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            target = node.args[0].value
            level = len(target) - len(target.lstrip("."))
            names.append(resolve(target.lstrip("."), level) if level else target)
    return names


def _graph():
    files = [p for p in PACKAGE.rglob("*.py") if "kernels" not in p.relative_to(PACKAGE).parts]
    rooms = {_room(p) for p in files}
    edges = {r: set() for r in rooms}
    for path in files:
        src = _room(path)
        for name in _imported(path):
            parts = name.split(".")
            if parts[0] != "fastdrop" or len(parts) < 2 or parts[1] == "kernels":
                continue
            dst = parts[1]
            if dst in rooms and dst != src:
                edges[src].add(dst)
    return edges


def test_no_import_circles_and_at_most_five_floors():
    edges = _graph()
    visiting = []

    @functools.lru_cache(maxsize=None)
    def floor(room):
        assert room not in visiting, f"import circle: {' -> '.join(visiting + [room])}"
        visiting.append(room)
        f = 1 + max((floor(d) for d in edges[room]), default=0)
        visiting.pop()
        return f

    floors = {r: floor(r) for r in edges}
    assert "_core" in floors and "nn" in floors  # the scan sees the package
    assert max(floors.values()) <= MAX_FLOORS, sorted(floors.items(), key=lambda kv: -kv[1])


def test_kernels_import_nothing_of_fastdrop():
    for path in (ROOT / "kernels").rglob("*.py"):
        for name in _imported(path, "fastdrop.kernels"):
            assert not (name == "fastdrop" or name.startswith("fastdrop.")) or \
                name.startswith("fastdrop.kernels"), f"{path.name} imports {name}"
