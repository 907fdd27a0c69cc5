"""Tests of tests/report_check.py: static report checks, render checks and missing Chromium.

No pipeline run is needed: static checks use handmade pages; the render checks use a report that
Snakemake builds from a two-rule workflow in a temporary directory (a few seconds).  Tests that
need Chromium fail, never skip, when it is missing: the CI installs it (apt-get install chromium).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import report_check as rc
from PIL import Image, ImageDraw

MINI_SNAKEFILE = """
rule all:
    input:
        "results/figures/square.png",
        "results/tables/numbers.csv",


rule figure:
    output:
        report(
            "results/figures/square.png",
            caption="report/square.rst",
            category="Figures",
            subcategory="shapes",
            labels={"figure": "square"},
        ),
    run:
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (160, 120), "white")
        ImageDraw.Draw(image).rectangle([20, 20, 140, 100], fill="red")
        image.save(output[0])


rule table:
    output:
        report(
            "results/tables/numbers.csv",
            caption="report/numbers.rst",
            category="Tables",
            labels={"table": "numbers"},
        ),
    shell:
        "printf 'a,b\\\\n1,2\\\\n' > {output}"
"""


def png_bytes(size: tuple[int, int] = (64, 48), flat: bool = False) -> bytes:
    """Return a small PNG: a red box on white, or one flat colour."""
    image = Image.new("RGB", size, "white")
    if not flat:
        ImageDraw.Draw(image).rectangle([4, 4, size[0] // 2, size[1] // 2], fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str, name: str) -> str:
    """Return a data URI the way Snakemake embeds a result."""
    encoded = base64.b64encode(data).decode()
    return f"data:{mime};charset=utf8;filename={name};base64,{encoded}"


def handmade_report(
    path: Path,
    png: bytes | None = None,
    caption: str = "<p>A figure.</p>",
    figure_uri: str | None = None,
) -> Path:
    """Write a page with Snakemake's data literals but no report app, and return it."""
    results = {
        "results/fig.png": {
            "name": "fig.png",
            "labels": None,
            "caption": caption,
            "mime_type": "image/png",
            "data_uri": figure_uri or data_uri(png or png_bytes(), "image/png", "fig.png"),
        },
        "results/table.csv": {
            "name": "table.csv",
            "labels": None,
            "caption": "<p>A table.</p>",
            "mime_type": "text/csv",
            "data_uri": data_uri(b"a,b\n1,2\n3,4\n", "text/csv", "table.csv"),
        },
    }
    categories = {
        "Figures": {"Other": ["results/fig.png"]},
        "Tables": {"Other": ["results/table.csv"]},
    }
    path.write_text(
        "<!doctype html><html><head><title>Snakemake Report</title></head><body>\n"
        '<div id="loading-screen"><p>Loading Snakemake Report...</p></div>\n'
        '<div id="app"></div>\n'
        f'<script id="results">\nvar results = {json.dumps(results)};\n</script>\n'
        f'<script id="categories">\nvar categories = {json.dumps(categories)};\n</script>\n'
        '<script>e("nav", {}, e("span", {}, "Workflow")); // "<nav><span>Figures</span>"</script>\n'
        "</body></html>\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; fails (does not skip) when it is not installed."""
    try:
        return rc.find_chromium()
    except rc.ChromiumNotFoundError as err:
        pytest.fail(f"{err}. The report render test needs it; the CI installs it.")


@pytest.fixture(scope="module")
def mini_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Snakemake report of a two-rule workflow: one PNG figure, one CSV table."""
    work = tmp_path_factory.mktemp("mini_workflow")
    (work / "Snakefile").write_text(MINI_SNAKEFILE, encoding="utf-8")
    (work / "report").mkdir()
    (work / "report" / "square.rst").write_text("A red **square**.\n", encoding="utf-8")
    (work / "report" / "numbers.rst").write_text("Two numbers.\n", encoding="utf-8")
    snakemake = [sys.executable, "-m", "snakemake", "--directory", str(work), "--quiet"]
    for extra in (["--cores", "1"], ["--report", "results/report.html"]):
        done = subprocess.run(
            [*snakemake, "--snakefile", str(work / "Snakefile"), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return work / "results" / "report.html"


def test_inspect_counts_handmade_report(tmp_path: Path) -> None:
    """Static inspection decodes the figure, parses the table and lists categories."""
    check = rc.inspect_report(handmade_report(tmp_path / "report.html"))
    assert (check.n_figures, check.n_tables, check.n_categories) == (1, 1, 2)
    assert (check.figures[0].width, check.figures[0].height) == (64, 48)
    assert check.tables[0].rows == 2
    assert check.categories == {"Figures": ["Other"], "Tables": ["Other"]}


@pytest.mark.parametrize(
    ("png", "message"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "not a valid image"),
        (png_bytes()[:60], "not a valid image"),
        (png_bytes((16, 16)), "only 16x16 pixels"),
        (png_bytes(flat=True), "one flat colour"),
    ],
    ids=["garbage", "truncated", "tiny", "flat"],
)
def test_broken_figure_fails(tmp_path: Path, png: bytes, message: str) -> None:
    """A figure that does not decode to a real image fails the static check."""
    with pytest.raises(ValueError, match=message):
        rc.inspect_report(handmade_report(tmp_path / "report.html", png=png))


def test_not_embedded_figure_fails(tmp_path: Path) -> None:
    """A result linked rather than embedded (zip-style report) is rejected."""
    page = handmade_report(tmp_path / "report.html", figure_uri="data/raw/1234/fig.png")
    with pytest.raises(ValueError, match="not an embedded base64 data URI"):
        rc.inspect_report(page)


def test_missing_caption_fails_unless_allowed(tmp_path: Path) -> None:
    """A result without caption fails by default and is a warning when allowed."""
    page = handmade_report(tmp_path / "report.html", caption="")
    with pytest.raises(ValueError, match="results/fig.png has no caption"):
        rc.inspect_report(page)
    assert rc.inspect_report(page, require_captions=False).warnings == [
        "results/fig.png has no caption"
    ]


def test_caption_with_docutils_error_fails(tmp_path: Path) -> None:
    """A caption that docutils could not render fails."""
    caption = '<div class="system-message"><p>Unknown target name</p></div>'
    with pytest.raises(ValueError, match="docutils error"):
        rc.inspect_report(handmade_report(tmp_path / "report.html", caption=caption))


def test_page_without_snakemake_data_fails(tmp_path: Path) -> None:
    """A page that is not a Snakemake 9 report fails clearly."""
    page = tmp_path / "report.html"
    page.write_text("<html><body>hello</body></html>", encoding="utf-8")
    with pytest.raises(ValueError, match="not a Snakemake 9 report"):
        rc.inspect_report(page)


def test_raw_html_has_no_render_markers(tmp_path: Path) -> None:
    """Markers inside <script> text do not count: unrendered HTML fails the render check."""
    text = handmade_report(tmp_path / "report.html").read_text(encoding="utf-8")
    with pytest.raises(AssertionError, match="did not render.*<nav> inside #app"):
        rc.render_markers(text, ["Figures", "Tables"])


def test_missing_chromium_names_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Chromium on PATH the error says how to install it."""
    monkeypatch.setattr(rc.shutil, "which", lambda name: None)
    with pytest.raises(rc.ChromiumNotFoundError, match="apt-get install chromium"):
        rc.find_chromium()
    with pytest.raises(rc.ChromiumNotFoundError, match="Debian package 'chromium'"):
        rc.check_report(handmade_report(tmp_path / "report.html"))


def test_cli_fails_on_broken_figure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command line exits 1 and says why."""
    page = handmade_report(tmp_path / "report.html", png=b"not a png")
    assert rc.main([str(page), "--chromium", sys.executable]) == 1
    assert "FAILED: figure results/fig.png is not a valid image" in capsys.readouterr().err


def test_check_displayed_rejects_bad_driver_results() -> None:
    """Figures must all display at their decoded size, without JavaScript errors."""
    figure = rc.EmbeddedResult("f.png", "f.png", "image/png", "F", "Other", 9, "c", 64, 48)
    check = rc.ReportCheck(Path("r.html"), [figure], [], [], {"F": ["Other"]})
    shown = {"via": "click", "width": 64, "height": 48, "shownWidth": 64, "shownHeight": 48}
    rc.check_displayed(check, {"done": True, "displayed": {"f.png": shown}, "errors": []})
    assert check.n_clicked == 1
    bad = [
        ({"done": True, "displayed": {}, "errors": []}, "never displayed"),
        ({"done": True, "displayed": {"f.png": shown | {"width": 0}}}, "natural size 0x48"),
        ({"done": True, "displayed": {"f.png": shown}, "errors": ["boom"]}, "JavaScript errors"),
        ({"done": False, "failures": ["timed out"]}, "timed out"),
    ]
    for driven, message in bad:
        with pytest.raises(AssertionError, match=message):
            rc.check_displayed(check, driven)


def test_handmade_report_fails_render_check(tmp_path: Path, chromium: str) -> None:
    """A page with valid embedded results but no report app fails in Chromium."""
    page = handmade_report(tmp_path / "report.html")
    with pytest.raises(AssertionError, match="JavaScript app did not render"):
        rc.check_report(page, chromium, timeout=60)


def test_real_report_renders_with_its_figure(
    mini_report: Path, chromium: str, tmp_path: Path
) -> None:
    """A real Snakemake report passes: app rendered, figure displayed by clicking."""
    shot = tmp_path / "shots" / "report.png"
    check = rc.check_report(mini_report, chromium, timeout=90, expect_figures=1, screenshot=shot)
    assert (check.n_figures, check.n_tables) == (1, 1)
    assert list(check.categories) == ["Figures", "Tables"]
    assert "<nav> inside #app" in check.markers
    assert "menu item 'Figures'" in check.markers
    shown = check.displayed["results/figures/square.png"]
    assert (shown["via"], shown["width"], shown["height"]) == ("click", 160, 120)
    assert check.screenshot_std > rc.MIN_SCREENSHOT_STD
    for path in (shot, shot.with_name("report-figure.png")):
        with Image.open(path) as image:
            assert image.size == rc.WINDOW_SIZE
    assert "figures displayed       1 (1 by clicking)" in check.summary()


def test_real_report_without_app_script_fails(
    mini_report: Path, chromium: str, tmp_path: Path
) -> None:
    """Breaking the report's app script makes the render check fail."""
    text = mini_report.read_text(encoding="utf-8")
    marker = "const root = ReactDOM.createRoot"
    assert marker in text
    broken = tmp_path / "report.html"
    broken.write_text(text.replace(marker, "throw new Error('broken'); " + marker), "utf-8")
    with pytest.raises(AssertionError, match="did not render"):
        rc.check_report(broken, chromium, timeout=60)


def test_cli_expect_figures_mismatch(mini_report: Path, chromium: str) -> None:
    """--expect-figures with the wrong count fails before rendering."""
    assert rc.main([str(mini_report), "--expect-figures", "3", "--chromium", chromium]) == 1
