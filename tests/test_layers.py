"""Layer rules between the packages: what the training data loader pulls in, what index/ may import."""

import ast
import subprocess
import sys
from pathlib import Path

import resail

ROOT = Path(resail.__file__).parent

# The loader runs in every data-loader worker: it must not drag in FAISS, joblib or a stage.
NOT_IN_THE_LOADER = ("faiss", "joblib", "resail.pipeline.bake", "resail.pipeline.segments_stage",
                     "resail.pipeline.runner", "resail.pipeline.toy", "resail.index.build", "resail.index.retrieval",
                     "resail.index.shards")


def test_training_data_module_imports_no_stage_faiss_or_joblib():
    code = "import sys, resail.synth.data; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "resail.pipeline.guidance" in loaded
    assert sorted(loaded & set(NOT_IN_THE_LOADER)) == []


def _imports(path: Path) -> set[str]:
    """Absolute module names a source file imports (relative imports resolved against `resail`)."""
    package = ["resail", *path.relative_to(ROOT).parent.parts]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.update(f"{module}.{a.name}" if not node.module else module for a in node.names)
    return names


def test_index_imports_nothing_from_pipeline_but_the_store():
    found = {name for path in (ROOT / "index").glob("*.py") for name in _imports(path)
             if name.startswith("resail.pipeline")}
    assert found <= {"resail.pipeline.store"}


def test_the_label_vocabulary_imports_only_the_base():
    """pipeline/labels/ sits below every package that reads a label map (docs/architecture.md)."""
    found = {name for path in (ROOT / "pipeline" / "labels").glob("*.py") for name in _imports(path)
             if name.startswith("resail.") and not name.startswith("resail.pipeline.labels")}
    assert found <= {"resail.choices", "resail.errors", "resail.workdir"}


# docs/architecture.md, "Layers": a module imports only from its own layer and those above it.
LAYERS = [
    ("errors", "choices", "common", "artifacts", "lifecycle", "workdir", "threads"),
    ("pipeline.labels", "pipeline.coco", "pipeline.datasets", "pipeline.decompose", "pipeline.store", "pipeline.compose",
     "pipeline.color_transfer", "pipeline.tps", "pipeline.distort", "pipeline.toy_scene", "index.descriptors",
     "index.score"),
    ("index.shards", "index.retrieval", "index.build", "index.search", "index.query"),
    ("pipeline.runner", "pipeline.segments_stage", "pipeline.toy", "pipeline.guidance", "pipeline.bake"),
    ("synth",),
    ("cli", "demo"),
]


def _layer_of(module: str) -> int | None:
    name = module.removeprefix("resail.")
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if name == m or name.startswith(m + "."):
                best = i
    return best


def _package_modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "docs", "build", ".venv") or rel.name == "__init__.py":
            continue
        yield "resail." + ".".join(rel.with_suffix("").parts), path


def test_every_module_has_a_layer():
    assert [m for m, _ in _package_modules() if _layer_of(m) is None] == []


def test_no_module_imports_a_lower_layer():
    wrong = []
    for module, path in _package_modules():
        own = _layer_of(module)
        for name in _imports(path):
            layer = _layer_of(name) if name.startswith("resail.") else None
            if layer is not None and layer > own:
                wrong.append(f"{module} (layer {own}) imports {name} (layer {layer})")
    assert wrong == []


def test_inference_side_never_imports_the_trainer():
    for module, path in _package_modules():
        if module in ("resail.synth.inference", "resail.synth.eval", "resail.synth.synthesize", "resail.synth.serve"):
            assert "resail.synth.train" not in _imports(path), module


def test_every_module_imports_under_the_declared_python_floor():
    """Every module imports on this interpreter, which meets pyproject's requires-python. CI runs
    on 3.11, the declared floor (3.11's tomllib is used; no older interpreter can get the project's
    torch wheels here), so the floor is one that is tested."""
    import importlib
    import re
    import sys

    floor = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert floor and sys.version_info[:2] >= tuple(map(int, floor.groups()))
    for module, _ in _package_modules():
        importlib.import_module(module)
