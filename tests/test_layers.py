"""The layering rule: core -> inputs/nn/ITK conversions -> pair/motion/result -> objectives -> fit -> start -> register
-> adapters, never upward (no exceptions, so no import circle); monai/itk only where allowed."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_inr_reg"

# rank of each module (lower may not import higher); adapters share the top rank
LAYERS = {
    "core": 0, "config": 0, "_ext": 0, "atomic": 0, "qc": 0,
    "nn": 1, "io": 1, "inputs": 1, "itk_bridge": 1, "optim": 1,
    "motion": 2, "result": 2, "pair": 2,
    "objectives": 3,
    "fit": 4,
    "start": 5,
    "register": 6,
    "transforms": 7, "itk_registration": 7, "pipeline": 7, "metrics": 7, "bench": 7, "demo": 7, "apply": 7,
    "cli": 8,
}
ADAPTERS_USING_MONAI = {"transforms", "itk_bridge", "itk_registration", "pipeline", "metrics", "bench", "demo", "cli",
                        "io", "result", "apply"}


def _top(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: resolve against the package
                parts = path.relative_to(PACKAGE).with_suffix("").parts
                base = list(parts[: len(parts) - node.level])
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
                for name in names:
                    yield "pkg", name, node
            elif node.module:
                yield "ext", node.module, node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("monai_inr_reg."):
                    yield "pkg", alias.name[len("monai_inr_reg."):], node
                else:
                    yield "ext", alias.name, node


def _own_layer(path: Path) -> str:
    return _top(".".join(path.relative_to(PACKAGE).with_suffix("").parts))


def test_no_upward_imports():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        own = _own_layer(path)
        if own == "__init__":
            continue
        assert own in LAYERS, f"{path.relative_to(PACKAGE)}: give its module a layer in LAYERS"
        for kind, name, node in _imports(path):
            if kind != "pkg":
                continue
            target = _top(name)
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_core_is_pure_torch_and_itk_is_lazy():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        own = _own_layer(path)
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for kind, name, node in _imports(path):
            if kind != "ext":
                continue
            root = _top(name)
            if root == "itk" and id(node) in top_level:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports itk at module level")
            if root == "monai" and own not in ADAPTERS_USING_MONAI:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports monai outside the adapters")
    assert not bad, "\n".join(bad)
