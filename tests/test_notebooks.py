"""Both research notebooks run top to bottom on their offline fallbacks (nbclient, a real kernel) and
produce their figures and reports."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # each notebook trains and analyses in a real kernel

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them: only the offline fallbacks are exercised
    try:
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def _outputs(nb) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", "".join(out.get("traceback", []))[-2000:]
            text.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


@pytest.mark.parametrize(
    "name, says, files, min_images",
    [
        (
            "wikitext_layer_pruning.ipynb",
            "falling back to CPython's documentation",
            ["wikitext_report.html", "wikitext_report.md", "wikitext_report.json"],
            3,
        ),
        (
            "cifar_block_pruning.ipynb",
            "scikit-learn digits upscaled to 32×32",
            ["cifar_report.html", "cifar_report.md", "cifar_report.json"],
            3,
        ),
    ],
)
def test_notebook_runs_offline_and_draws(name, says, files, min_images, tmp_path):
    nb = _run(name, tmp_path)
    text, images = _outputs(nb)
    assert says in text  # it says which data it fell back to
    assert images >= min_images
    if name.startswith("cifar"):  # the channel-pruning cell ran every criterion
        assert "prunable channel groups" in text and "greedy obs  obs" in text
    else:  # neurons and heads at 20 %
        assert "prunable groups" in text and "obs        obs" in text
    for f in files:
        assert (tmp_path / f).stat().st_size > 1000, f
    assert "data:image/svg+xml;base64," in (tmp_path / files[0]).read_text()
