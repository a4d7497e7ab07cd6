"""The architecture, read from the code: who may import whom, module sizes, and that every
module imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "transfusion"

# lower layers never import higher ones (STYLE: cli -> train / engine / evaluate -> model, data,
# diffusion, autoencoders -> config; the web demo beside train and evaluate)
LAYERS = {
    "transfusion.config": 0, "transfusion.presets": 0, "transfusion.batch": 0, "transfusion.fileio": 0, "transfusion.hub": 0,
    "transfusion.diffusion": 1, "transfusion.tokenizer": 1, "transfusion.data.document": 1, "transfusion.card": 1,
    "transfusion.samplers": 2, "transfusion.model": 2, "transfusion.tracking": 2, "transfusion.autoencoders": 2, "transfusion.data": 2,
    "transfusion.metrics": 2, "transfusion.visualize": 2,
    "transfusion.objective": 3, "transfusion.optim": 3, "transfusion.flops": 3, "transfusion.step": 3, "transfusion.checkpoint": 3, "transfusion.train_state": 3, "transfusion.sharing": 3, "transfusion.hf": 3, "transfusion.distributed": 3, "transfusion.engine": 3,
    "transfusion.engine.codec": 3, "transfusion.engine.forward": 3,
    "transfusion.components": 3,
    "transfusion.evaluate": 4, "transfusion.train": 4, "transfusion.posttrain": 4, "transfusion.demo": 4, "transfusion.pipeline": 4,
    "transfusion.cli": 5, "transfusion.__main__": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package but its empty top-level ``__init__``."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every transfusion module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in modules())


def test_imports_point_one_way():
    edges = graph()
    upward = [(a, b) for a, deps in edges.items() for b in deps if layer(b) > layer(a)]
    assert not upward, f"imports from a lower layer into a higher one: {upward}"
    assert edges["transfusion.config"] <= {"transfusion.presets"} and not edges["transfusion.presets"], \
        "config (and its presets) is a leaf"
    data_to_model = [(a, b) for a, deps in edges.items() if a.startswith("transfusion.data")
                     for b in deps if b.startswith("transfusion.model")]
    assert not data_to_model
    assert "transfusion.distributed" not in edges["transfusion.objective"]
    model_deps = {b for a, deps in edges.items() if a.startswith("transfusion.model") for b in deps}
    assert model_deps <= {"transfusion.config", "transfusion.batch"} | {m for m in edges if m.startswith("transfusion.model")}
    # the image makers see the model through their Forward interface: the engine builds them, one way
    assert not edges["transfusion.engine.images"] & {"transfusion.engine.engine", "transfusion.engine.forward",
                                                     "transfusion.engine.tasks", "transfusion.engine.codec"}
    ae_deps = {b for a, deps in edges.items() if a.startswith("transfusion.autoencoders") for b in deps}
    assert all(b.startswith("transfusion.autoencoders") or b in ("transfusion.fileio", "transfusion.hub",
                                                                 "transfusion.config") for b in ae_deps), ae_deps


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_files_stay_small_and_the_engine_class_smaller():
    ours = [p for p in ROOT.glob("[!.]*/**/*.py")  # not inside hidden folders (benchmarks/.peer-venv)
            if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    long = {str(p.relative_to(ROOT)): n for p in ours if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
    tree = ast.parse((PACKAGE / "engine" / "engine.py").read_text())
    (engine,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine"]
    assert engine.end_lineno - engine.lineno + 1 <= 150


def test_every_module_imports_on_its_own():
    """Each module imported first, with no other module of the package loaded before it."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(modules())!r}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'transfusion' or m.startswith('transfusion.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(modules())


def test_comments_cite_the_paper_not_a_file_the_repository_lacks():
    phrase = "SP" + "EC section"  # the phrase itself, not written out here
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.glob("[!.]*/**/*.py") if phrase in p.read_text()]
    assert not offenders


def test_generation_imports_nothing_of_distributed_training():
    script = ("import sys\nimport transfusion.checkpoint, transfusion.pipeline, transfusion.engine.tasks\n"
              "print(sorted(m for m in sys.modules if m.startswith(('torch.distributed.checkpoint', "
              "'transfusion.train_state', 'transfusion.distributed', 'transfusion.train'))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
