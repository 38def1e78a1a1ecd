"""The package's layers as its folders and imports show them (docs/design.md draws the map). Each layer imports
only the layers below it: common <- data <- training <- runs <- environment <- the entry points <- the bench (bench/,
beside the package), and nothing imports the bench, a tool on top of the library. The training library imports
neither the run directory's modules nor the environment's plumbing. Imports are read from the source with ast, so that a
lazy import inside a function counts too."""

import ast
import glob
import os

import pytest

from helpers import REPO

BENCH = "bench"  # the top-level folder beside distmnist/, not part of the package
# Low to high: a module may import its own layer and the ones before it.
LAYERS = ("common", "data", "training", "runs", "environment", "entry", "bench")
FOLDERS = LAYERS[:5]  # the package's layers that are folders of distmnist/
ENTRY_POINTS = {"distmnist.train", "distmnist.predict", "distmnist.sweep", "distmnist.doctor",
                "distmnist.data.__main__"}


def imported_modules(path: str) -> set:
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def layer(module: str):
    """The layer of a distmnist or bench module (None for the package itself, which only records the start time)."""
    if module in ENTRY_POINTS:
        return "entry"
    if module == BENCH or module.startswith(BENCH + "."):
        return "bench"
    parts = module.split(".")
    if parts[0] == "distmnist" and len(parts) >= 2 and parts[1] in FOLDERS:
        return parts[1]
    return None if module == "distmnist" else "unknown"


def modules():
    """{module: path} for every module of the package and of the bench."""
    paths = [p for folder in ("distmnist", BENCH) for p in glob.glob(os.path.join(REPO, folder, "**", "*.py"),
                                                                     recursive=True)]
    return {module_name(p): p for p in paths}


def upward_imports(found: dict) -> dict:
    """{module: [the distmnist or bench modules it imports from a layer above its own]}, for the modules given as
    {module: path}."""
    known = set(found) | {"distmnist"}
    wrong = {}
    for module, path in found.items():
        if layer(module) is None:
            continue  # distmnist/__init__.py: imports nothing of the package
        rank = LAYERS.index(layer(module))
        for imported in imported_modules(path):
            if imported not in known:
                continue  # a name imported from a module (distmnist.common.errors.UserError): its module counts
            other = layer(imported)
            if other is not None and LAYERS.index(other) > rank:
                wrong.setdefault(module, []).append(imported)
    return wrong


def test_every_module_is_in_a_layer_and_imports_only_layers_below_it():
    found = modules()
    assert len(found) > 40
    assert {"bench", "bench.solo", "bench.contenders.jax_scan"} <= {m for m in found if layer(m) == "bench"}
    assert {m for m in found if layer(m) == "unknown"} == set()
    assert {m for m in found if layer(m) is None} == {"distmnist"}
    assert upward_imports(found) == {}


def test_nothing_outside_the_bench_imports_it():
    library = {m: p for m, p in modules().items() if layer(m) != "bench"}
    assert library and all(m.startswith("distmnist") for m in library)
    offenders = {m: sorted(i for i in imported_modules(p) if i == BENCH or i.startswith(BENCH + "."))
                 for m, p in library.items()}
    assert {m: found for m, found in offenders.items() if found} == {}


@pytest.mark.parametrize("module, source, imported", [
    ("distmnist.training.planted", "def f():\n    from distmnist.runs import checkpoints\n",
     "distmnist.runs.checkpoints"),
    ("distmnist.common.planted", "import distmnist.data.dataset\n", "distmnist.data.dataset"),
    ("distmnist.runs.planted", "from distmnist.environment.tfquiet import import_tensorflow\n",
     "distmnist.environment.tfquiet"),
    ("distmnist.training.planted", "def f():\n    from bench.timing import Timing\n", "bench.timing"),
    ("distmnist.train", "import bench.solo\n", "bench.solo"),
])
def test_the_check_sees_an_upward_import_lazy_or_not(tmp_path, module, source, imported):
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    found = {**modules(), module: str(planted)}
    wrong = upward_imports(found)
    assert set(wrong) == {module} and imported in wrong[module]
