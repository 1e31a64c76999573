"""Self-contained HTML reports: embedded images, no network references, and a real Chromium screenshot."""

from __future__ import annotations

import base64
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from brainvlp.evaluate import html
from brainvlp.evaluate.html import (
    CHROMIUM_BINARIES,
    ChromiumNotFound,
    render_html,
    screenshot,
    write_html_report,
)

REPORT = """# Retrieval evaluation: tiny

Model `tiny`, split **test**.

|                | R@1   |  R@5 |  MdR |
|----------------|------:|-----:|-----:|
| text → image   | 0.250 | 0.75 |  2.0 |
| image → text   | 0.125 | 0.50 |  3.5 |
| *chance*       | 0.042 | 0.21 | 12.5 |

![recall@k, both directions](recall_at_k.png)
"""


def _plot(path: Path) -> Path:
    """A small, colourful PNG: two thick lines on a coloured background."""
    figure = Figure(figsize=(4, 3), dpi=80, facecolor="#ffe9c7")
    axes = figure.add_subplot()
    k = np.arange(1, 25)
    axes.plot(k, np.sqrt(k / 24), color="tab:blue", linewidth=3, label="text → image")
    axes.plot(k, k / 24, color="tab:red", linewidth=3, label="chance")
    axes.fill_between(k, 0, k / 24, color="tab:green", alpha=0.4)
    axes.legend()
    figure.savefig(path)
    return path


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    _plot(tmp_path / "recall_at_k.png")
    (tmp_path / "report.md").write_text(REPORT, encoding="utf-8")
    return tmp_path


def test_render_embeds_images_and_keeps_tables(report_dir: Path) -> None:
    page = render_html(REPORT, title="Retrieval <tiny>", base_dir=report_dir)

    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1
    assert sources[0].startswith("data:image/png;base64,")
    embedded = base64.b64decode(sources[0].split(",", 1)[1])
    assert embedded == (report_dir / "recall_at_k.png").read_bytes()
    assert "recall_at_k.png" not in page
    assert page.count("<table>") == 1
    assert '<td style="text-align: right;">0.250</td>' in page
    assert "<title>Retrieval &lt;tiny&gt;</title>" in page
    assert "UTC" in page
    # Self-contained: no external stylesheets, scripts or fonts.
    assert "<link" not in page
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page


def test_render_supports_svg_and_jpeg(tmp_path: Path) -> None:
    (tmp_path / "a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    Image.new("RGB", (4, 4), "red").save(tmp_path / "b.jpg")
    page = render_html("![a](a.svg)\n\n![b](b.jpg)", title="t", base_dir=tmp_path)
    assert "data:image/svg+xml;base64," in page
    assert "data:image/jpeg;base64," in page


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        render_html("![gone](nowhere.png)", title="t", base_dir=tmp_path)
    (tmp_path / "report.md").write_text("# R\n\n![gone](nowhere.png)\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png.*report\.md"):
        write_html_report(tmp_path / "report.md")


@pytest.mark.parametrize(
    "src", ["http://example.org/a.png", "https://example.org/a.png", "//example.org/a.png"]
)
def test_remote_image_is_refused(tmp_path: Path, src: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        render_html(f"![remote]({src})", title="t", base_dir=tmp_path)


def test_write_html_report_beside_markdown(report_dir: Path) -> None:
    out = write_html_report(report_dir / "report.md")
    assert out == report_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    assert "<title>Retrieval evaluation: tiny</title>" in page
    assert "data:image/png;base64," in page

    (report_dir / "report.md").write_text("no heading here\n", encoding="utf-8")
    assert "<title>brainvlp report</title>" in write_html_report(report_dir / "report.md").read_text()
    assert "<title>Mine</title>" in write_html_report(report_dir / "report.md", title="Mine").read_text()


def test_screenshot_without_chromium(report_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html.shutil, "which", lambda name: None)
    with pytest.raises(ChromiumNotFound, match="chromium"):
        screenshot(report_dir / "report.md", report_dir / "shot.png")
    assert issubclass(ChromiumNotFound, RuntimeError)


def test_screenshot_failure_is_reported(report_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = shutil.which("false")
    assert failing is not None
    monkeypatch.setattr(html.shutil, "which", lambda name: failing)
    with pytest.raises(RuntimeError, match="exited with 1 and no screenshot"):
        screenshot(report_dir / "report.md", report_dir / "shot.png")


def test_screenshot_is_not_blank(report_dir: Path) -> None:
    if not any(shutil.which(name) for name in CHROMIUM_BINARIES):
        pytest.skip("chromium not installed")
    html_path = write_html_report(report_dir / "report.md")

    started = time.perf_counter()
    png = screenshot(html_path, report_dir / "shot" / "report.png", width=900, height=900, timeout_s=60)
    print(f"screenshot took {time.perf_counter() - started:.1f} s")

    with Image.open(png) as image:
        assert image.size == (900, 900)
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    grey = rgb.mean(axis=2)
    assert grey.std() > 10
    assert (grey < 245).mean() > 0.05
    # The plot's colours made it through: some strongly saturated pixels.
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    assert (saturation > 40).mean() > 0.02
