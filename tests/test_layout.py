"""The package's structure rules, read off its import statements (no module is run).

* the paper's maths (neurons, attention, layers) imports no ESPnet;
* the energy report never imports the deploy form (deploy imports energy's counters);
* nothing in the package imports recipe code (egs2/, the demo pipelines);
* no library module is much over 300 lines.
"""

import ast
from pathlib import Path

import pytest

from helpers import PYSCRIPTS, REPO

PACKAGE = REPO / "espnet_imlspike"
MODULES = sorted(PACKAGE.rglob("*.py"))
RECIPE_MODULES = {p.stem for p in PYSCRIPTS.glob("*.py")}
MATHS = ["neurons", "neurons_multistep", "neurons_recurrent", "neurons_ihc", "attention",
         "attention_flex", "layers", "frontends/learnable_filterbank"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """Every module named by an import statement of ``path`` (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_rules_see_the_modules_they_are_about():
    names = {module_name(p) for p in MODULES}
    assert {f"espnet_imlspike.{m.replace('/', '.')}" for m in MATHS} <= names
    assert "espnet_imlspike.energy.hooks" in names and "espnet_imlspike.deploy.convert" in names
    assert {"asr_pipeline", "tone_corpus", "spk_pipeline"} <= RECIPE_MODULES
    # the parser sees imports inside functions too (the old circular imports hid there)
    deploy = imports(PACKAGE / "deploy/convert.py")
    assert "espnet_imlspike.energy.ops" in deploy


@pytest.mark.parametrize("name", MATHS)
def test_maths_modules_import_no_espnet(name):
    found = [m for m in imports(PACKAGE / f"{name}.py")
             if m.split(".")[0] in ("espnet", "espnet2")]
    assert not found, f"{name}.py imports {found}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "energy").glob("*.py")), ids=lambda p: p.name)
def test_energy_never_imports_deploy(path):
    assert not [m for m in imports(path) if m.startswith("espnet_imlspike.deploy")]


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_package_imports_no_recipe_code(path):
    bad = [m for m in imports(path)
           if m.split(".")[0] in RECIPE_MODULES or m.startswith("espnet_imlspike.demo")]
    assert not bad, f"{module_name(path)} imports recipe code {bad}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_library_module_is_much_over_300_lines(path):
    assert len(path.read_text().splitlines()) <= 320
