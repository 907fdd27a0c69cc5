"""Rule scripts that compute nothing with torch must not import it (nor other heavy packages).

Most jobs are a few seconds of work after a Python start; `import torch` alone costs seconds
of CPU in every such job, `scipy.stats` over a second, matplotlib about one. Each script is
loaded in a fresh interpreter (its main() guarded out, as outside Snakemake) and the packages
it must not load are looked up in sys.modules, so an import added later at a module's top
(the script's or a library module's it imports) fails here instead of slowing every job.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"

#: Packages no listed script loads at import; a script's own allowances are removed from this.
HEAVY = ("torch", "torchvision", "timm", "scipy", "matplotlib", "sklearn")

#: Torch-free scripts, why none of them needs torch, and what each may load anyway.
TORCH_FREE: dict[str, tuple[str, tuple[str, ...]]] = {
    "merge_ablation.py": ("stacks shard counts (numpy) into drop tables (pandas)", ()),
    "unit_table.py": ("joins attribute, drop and concept tables (pandas)", ()),
    "layer_statistics.py": (
        "correlates table columns; scipy.stats is imported inside correlation_table",
        (),
    ),
    "compare.py": ("reads per-layer tables and the baseline into one comparison row each", ()),
    "summary.py": ("renders comparison tables as markdown", ()),
    "baseline_accuracy.py": ("per-class accuracy from the stored logits (numpy)", ()),
    "figure.py": ("draws stored tables and maps", ("matplotlib",)),
    "browser_layer.py": ("reads tables and stored maps; masks and figures with numpy, PIL", ()),
    "browser_page.py": ("renders the page with Jinja2 and copies image files", ()),
    "generate_world.py": ("draws the synthetic images with numpy and PIL", ()),
    "download_fetch.py": ("downloads files", ()),
    "prepare_eval_set.py": ("unpacks an eval set; scipy.io only inside the .mat reader", ()),
    "download_convert_checkpoint.py": (
        "imports torch inside the conversion only, not to be started",
        (),
    ),
}

PROBE = """
import json, runpy, sys
sys.path.insert(0, sys.argv[2])
runpy.run_path(sys.argv[1], run_name="imported_by_test")
print(json.dumps(sorted(name for name in sys.modules if "." not in name)))
"""


def loaded_packages(script: Path) -> set[str]:
    """Top-level packages in sys.modules after loading `script` in a fresh interpreter."""
    return set(probe_json(PROBE, str(script), str(ROOT / "workflow")))


def probe_json(code: str, *args: str) -> Any:
    """Run `code` in a fresh interpreter with `args` and return the JSON of its last line."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("script", sorted(TORCH_FREE))
def test_torch_free_script_imports_no_heavy_package(script: str) -> None:
    _, allowed = TORCH_FREE[script]
    forbidden = set(HEAVY) - set(allowed)
    assert not loaded_packages(SCRIPTS / script) & forbidden


def test_every_script_is_classified() -> None:
    """A new script must be listed as torch-free or as a torch job, so the list stays complete."""
    torch_jobs = {
        "ablate_shard.py",
        "concept_iou.py",
        "cumulative_ablation.py",
        "extract_activations.py",
        "train_model.py",
        "unit_attributes.py",
    }
    scripts = {path.name for path in SCRIPTS.glob("*.py")}
    assert scripts == set(TORCH_FREE) | torch_jobs


def test_probe_sees_torch_where_a_script_imports_it() -> None:
    """The check can fail: a torch job's script does load torch in the probe."""
    assert "torch" in loaded_packages(SCRIPTS / "ablate_shard.py")


VERSIONS_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from unitablation.extraction import library_versions
versions = library_versions()
print(json.dumps({"versions": versions, "torchvision_loaded": "torchvision" in sys.modules}))
"""


def test_store_provenance_names_torchvision_without_importing_it() -> None:
    """Every extraction records torchvision's version; reading it must not import torchvision."""
    from importlib.metadata import version

    report = probe_json(VERSIONS_PROBE, str(ROOT / "workflow"))
    assert not report["torchvision_loaded"]
    assert report["versions"]["torchvision"] == version("torchvision")
    assert report["versions"]["torch"].split("+")[0] == version("torch").split("+")[0]


PROBE_MODEL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from unitablation import models
spec = models.ModelSpec.from_config({"arch": "tinyalex", "batchnorm": True, "dropout": 0.5}, 3, 64)
layouts = models.check_model_layers(models.probe_model(spec), ["features.relu5"], "t", 64)
units, dynamo = layouts["features.relu5"].units, "torch._dynamo" in sys.modules
print(json.dumps({"units": units, "dynamo": dynamo}))
"""


def test_tinyalex_layer_probe_does_not_load_dynamo() -> None:
    """The Snakefile probes each model's layers at every start; torch._dynamo costs ~2 s there."""
    report = probe_json(PROBE_MODEL, str(ROOT / "workflow"))
    assert report == {"units": 64, "dynamo": False}
