"""The HTML report in a real browser: headless Chromium loads it (no network), every figure decodes,
and a screenshot shows each figure as a non-blank image of plausible size.  CI installs Chromium; the
test skips only where Chromium is absent outside CI."""

import html
import json
import os
import re
import shutil
import subprocess

import pytest

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
pytestmark = [
    pytest.mark.slow,  # a headless browser
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="Chromium is not installed (CI installs Debian's chromium)",
    ),
]
WIDTH = 1300


def _chromium(tmp_path, *args: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    res = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_report_loads_in_chromium_with_every_figure_drawn(pruned_report, tmp_path):
    assert CHROMIUM is not None, "CI must install chromium (see .ci/run)"
    _, path = pruned_report
    url = path.resolve().as_uri()
    dom = _chromium(tmp_path, f"--window-size={WIDTH},1000", "--dump-dom", url)
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)
    assert errors is not None and errors.group(1) == "", (
        "the page's own script did not run, or reported errors"
    )
    figs = json.loads(html.unescape(re.search(r'data-figures="([^"]*)"', dom).group(1)))
    assert [f["id"] for f in figs] == ["fig-graph", "fig-bars", "fig-agreement", "fig-curves"]
    for f in figs:
        assert f["ok"] and f["w"] >= 300 and f["h"] >= 150, f  # decoded SVG of plausible size
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url)
    from matplotlib.image import imread

    img = imread(shot)[..., :3]  # [H, W, 3] in [0, 1]
    assert img.shape[1] == WIDTH and img.shape[0] >= min(height, 16000) - 5
    for f in figs:
        x0, y0 = int(f["x"]), int(f["y"])
        crop = img[y0 : y0 + int(f["ch"]), x0 : x0 + int(min(f["cw"], WIDTH - x0))]
        assert crop.shape[0] >= 100 and crop.shape[1] >= 200, (f["id"], crop.shape)
        ink = (crop.min(-1) < 0.9).mean()  # share of pixels that are not near-white
        assert ink > 0.01 and crop.std() > 0.03, (f["id"], ink, crop.std())
    page = img.mean(-1)
    assert (page < 0.9).mean() > 0.02  # the page as a whole is not blank
