"""Self-contained HTML versions of the platform's Markdown reports, and PNG screenshots of them.

Evaluation and tuning jobs write ``report.md`` with pipe tables and ``![alt](plot.png)`` links to PNGs
beside it. That pair is awkward to share: a mailed or attached ``report.md`` loses its plots, and a
Markdown viewer is not always at hand. :func:`write_html_report` turns it into one ``report.html`` with
every image embedded as a ``data:`` URI and the stylesheet inline, so the file can be mailed around and
opened offline in any browser. For the same reason the page never references the network: absolute image
URLs are rejected instead of being left for the browser to fetch.

:func:`screenshot` renders such a page with headless Chromium, for checking the layout in tests and for
previews where a browser is not available.

The module only renders what it is given; what goes into a report is decided by the report writers.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

import markdown

__all__ = ["ChromiumNotFound", "render_html", "screenshot", "write_html_report"]

DEFAULT_TITLE = "brainvlp report"
CHROMIUM_BINARIES = ("chromium", "chromium-browser", "google-chrome")
_EXTENSIONS = ["tables", "fenced_code", "sane_lists", "attr_list", "toc"]
_MIME_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}
_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]*)(")', re.IGNORECASE)
# Any "scheme:" prefix or a protocol-relative "//" would make the browser fetch something.
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")

_CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --zebra: #f6f8fa;
  --head: #eaeef2; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5; font-size: 15px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { border-bottom: 1px solid var(--line); background: var(--zebra); }
header .wrap { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between;
  gap: 0 1.5rem; padding-top: 0.6rem; padding-bottom: 0.6rem; }
header .title { font-weight: 600; font-size: 1.05rem; }
header .stamp { color: var(--muted); font-size: 0.85rem; }
.wrap { max-width: 1100px; margin: 0 auto; padding: 0 1.5rem; }
main { padding-top: 0.5rem; padding-bottom: 3rem; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1.6em 0 0.6em; }
h1 { font-size: 1.7rem; border-bottom: 1px solid var(--line); padding-bottom: 0.3em; }
h2 { font-size: 1.3rem; border-bottom: 1px solid var(--line); padding-bottom: 0.25em; }
h3 { font-size: 1.1rem; }
p, ul, ol { margin: 0.6em 0; }
a { color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em;
  background: var(--zebra); padding: 0.1em 0.3em; border-radius: 4px; }
pre { background: var(--zebra); border: 1px solid var(--line); border-radius: 6px; padding: 0.8em 1em;
  overflow-x: auto; }
pre code { background: none; padding: 0; }
/* A table wider than the page scrolls on its own instead of overflowing the page. */
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92rem; max-width: 100%; display: block;
  overflow-x: auto; }
th, td { border: 1px solid var(--line); padding: 0.35em 0.75em; vertical-align: top; }
th { position: sticky; top: 0; background: var(--head); font-weight: 600; text-align: left; }
td { font-variant-numeric: tabular-nums; }
td[style*="right"] { white-space: nowrap; }  /* "0.812 [0.790, 0.834]" reads as one value */
thead:not(:has(th:not(:empty))) { display: none; }  /* key/value tables have an all-empty header row */
tbody tr:nth-child(even) { background: var(--zebra); }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
blockquote { margin: 1em 0; padding: 0 1em; color: var(--muted); border-left: 4px solid var(--line); }
/* Report-generation examples (reportgen.examples): sentences coloured by their findings. */
table.example { display: table; width: 100%; table-layout: fixed; }
table.example td { font-variant-numeric: normal; }
table.example td.counts { color: var(--muted); font-size: 0.85rem; }
.finding-agree { background: #dafbe1; }
.finding-wrong { background: #ffd7d5; }
.finding-missing { background: #fff1c2; }
.legend span { padding: 0 0.3em; }
"""


class ChromiumNotFound(RuntimeError):
    """No headless Chromium (``chromium``, ``chromium-browser`` or ``google-chrome``) on PATH."""


def render_html(markdown_text: str, *, title: str, base_dir: str | Path) -> str:
    """One self-contained HTML page from a Markdown report whose image links are relative to ``base_dir``.

    Raises FileNotFoundError for a missing image and ValueError for an image that is not a local file
    (URL or absolute path) or not PNG/SVG/JPEG.
    """
    base_dir = Path(base_dir)
    body = markdown.markdown(markdown_text, extensions=_EXTENSIONS, output_format="html")
    body = _IMG_SRC.sub(lambda m: m.group(1) + _data_uri(m.group(2), base_dir) + m.group(3), body)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    safe_title = html.escape(title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # No network, ever: the CSP makes the browser refuse anything that is not inline or a data: URI.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{safe_title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<header><div class="wrap"><span class="title">{safe_title}</span>'
        f'<span class="stamp">generated {generated}</span></div></header>\n'
        f'<main class="wrap">\n{body}\n</main>\n</body>\n</html>\n'
    )


def write_html_report(report_md: str | Path, *, title: str | None = None) -> Path:
    """Write ``report.html`` beside ``report_md`` and return its path.

    The title defaults to the first ``# `` heading of the Markdown, else ``"brainvlp report"``.
    """
    report_md = Path(report_md)
    text = report_md.read_text(encoding="utf-8")
    if title is None:
        title = _first_heading(text) or DEFAULT_TITLE
    try:
        page = render_html(text, title=title, base_dir=report_md.parent)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (linked from {report_md})") from error
    out = report_md.with_name("report.html")
    out.write_text(page, encoding="utf-8")
    return out


def screenshot(
    html_path: str | Path,
    png_path: str | Path,
    *,
    width: int = 1280,
    height: int = 2000,
    timeout_s: float = 120,
) -> Path:
    """Render ``html_path`` in headless Chromium and save a ``width`` x ``height`` PNG at ``png_path``."""
    binary = next((found for name in CHROMIUM_BINARIES if (found := shutil.which(name))), None)
    if binary is None:
        raise ChromiumNotFound(f"none of {', '.join(CHROMIUM_BINARIES)} found on PATH")
    html_path = Path(html_path).resolve(strict=True)
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # A PNG left over from an earlier run would pass the "was it written" check below.
    png_path.unlink(missing_ok=True)
    # A fresh profile each time: a shared one is locked by any other running Chromium and keeps state.
    profile = tempfile.mkdtemp(prefix="brainvlp-chromium-")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        # Without these Chromium keeps trying to reach Google's servers (updates, sync, field trials).
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={png_path}",
        f"--window-size={width},{height}",
        html_path.as_uri(),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        message = f"chromium did not finish within {timeout_s:g} s: {_tail(error.stderr)}"
        raise RuntimeError(message) from error
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if result.returncode != 0 or not png_path.is_file():
        raise RuntimeError(
            f"chromium exited with {result.returncode} and {'a' if png_path.is_file() else 'no'} "
            f"screenshot: {_tail(result.stderr)}"
        )
    return png_path


def _data_uri(src: str, base_dir: Path) -> str:
    """The ``data:`` URI for one ``<img src>`` (HTML-escaped, as the markdown package emits it)."""
    target = html.unescape(src)
    if target.startswith("data:"):
        return src
    if _URL.match(target):
        raise ValueError(f"image {target!r} is a URL; reports must embed local files, never fetch")
    if Path(target).is_absolute():
        raise ValueError(f"image {target!r} is an absolute path; link images relative to the report")
    path = base_dir / target
    if not path.is_file() and (base_dir / unquote(target)).is_file():
        path = base_dir / unquote(target)  # Links written as "my%20plot.png".
    mime = _MIME_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"image {target!r}: only {', '.join(_MIME_TYPES)} can be embedded")
    if not path.is_file():
        raise FileNotFoundError(f"image {target!r} of the report in {base_dir} not found at {path}")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _first_heading(text: str) -> str | None:
    """The first level-1 ATX heading outside fenced code, without trailing ``#``s."""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("# "):
            heading = line[2:].strip().rstrip("#").strip()
            if heading:
                return heading
    return None


def _tail(stderr: str | bytes | None, lines: int = 15) -> str:
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    # Headless Chromium logs dozens of harmless D-Bus errors in containers; they would bury the real one.
    kept = [line for line in (stderr or "").strip().splitlines() if "dbus" not in line.lower()]
    tail = kept[-lines:]
    return "\n".join(tail) if tail else "(no stderr)"
