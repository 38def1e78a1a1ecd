"""The package's layers as its imports show them: the benchmark (`distmnist/bench/`) is a tool on top of the
library, which nothing of the library imports (read from the source with ast, so that a lazy import inside a
function counts too)."""

import ast
import glob
import os

from helpers import REPO

BENCH = "distmnist.bench"


def imported_modules(path: str) -> set:
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_nothing_outside_the_bench_imports_it():
    library = [p for p in glob.glob(os.path.join(REPO, "distmnist", "**", "*.py"), recursive=True)
               if os.sep + "bench" + os.sep not in p]
    assert len(library) > 20
    offenders = {os.path.relpath(p, REPO): sorted(m for m in imported_modules(p) if m == BENCH or
                                                  m.startswith(BENCH + "."))
                 for p in library}
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_the_check_sees_a_lazy_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from distmnist.bench import solo\n")
    assert "distmnist.bench.solo" in imported_modules(str(planted))
