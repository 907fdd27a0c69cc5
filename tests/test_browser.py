"""The unit browser (results/browser/): its figures against hand-made masks, its data against the
tables and stores of the tiny run (independent slow paths written here), bad input refused by
name, and the page itself driven in headless Chromium over the DevTools protocol."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import report_check as rc
from PIL import Image

from unitablation.browser import cards, outlines, page
from unitablation.rotation import haar_rotation

# --- figures -------------------------------------------------------------------------------


def slow_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask or outside the image, by loops."""
    height, width = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for i in range(height):
        for j in range(width):
            if not mask[i, j]:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                a, b = i + di, j + dj
                if not (0 <= a < height and 0 <= b < width) or not mask[a, b]:
                    out[i, j] = True
    return out


def decode_uri(uri: str) -> np.ndarray:
    """A PNG data URI as an (H, W, 4) array."""
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        return np.asarray(image.convert("RGBA"))


def test_outline_is_the_mask_boundary() -> None:
    mask = np.zeros((9, 11), dtype=bool)
    mask[2:6, 3:9] = True  # a block inside
    mask[0:3, 0:2] = True  # a block on the corner: closed by the image edge
    mask[7, 10] = True  # one pixel
    expected = slow_boundary(mask)
    assert np.array_equal(outlines.boundary(mask), expected)
    rgba = decode_uri(outlines.mask_overlay_uri(mask))
    assert rgba.shape == (9, 11, 4)
    assert np.array_equal(rgba[..., 3] == outlines.OUTLINE_RGBA[3], expected)
    assert np.array_equal(rgba[..., 3] > 0, mask)  # tint inside, transparent outside


def test_top_rows_largest_first_ties_by_index_nan_skipped() -> None:
    values = np.array([0.5, np.nan, 2.0, 0.5, 2.0, -1.0])
    assert cards.top_rows(values, 4) == [2, 4, 0, 3]
    assert cards.top_rows(values, 10) == [2, 4, 0, 3, 5]


def test_hurt_column_prefers_ten_points() -> None:
    assert cards.hurt_column(["n_classes_hurt_5", "n_classes_hurt_10"]) == "n_classes_hurt_10"
    assert cards.hurt_column(["n_classes_hurt_20", "n_classes_hurt_7.5"]) == "n_classes_hurt_7.5"
    assert cards.hurt_column(["unit"]) is None


def test_bars_title_carries_the_table_text() -> None:
    svg = cards.class_bars([("forest", "12.5"), ("alley", "-2"), ("beach", "")])
    assert "<title>forest: 12.5 pp</title>" in svg and "<title>alley: -2 pp</title>" in svg
    assert svg.count("<rect") == 2  # no bar for an empty cell


def test_script_json_cannot_close_the_script() -> None:
    text = page.script_json({"name": "</script><b>"})
    assert "</" not in text and json.loads(text) == {"name": "</script><b>"}


# --- bad input -----------------------------------------------------------------------------


def test_units_table_without_a_required_column_is_named(tmp_path: Path) -> None:
    table = tmp_path / "units.csv"
    table.write_text("unit,overall_drop\n0,1\n")
    sources = cards.LayerSources(table, tmp_path / "d.csv", tmp_path / "e.h5", tmp_path)
    with pytest.raises(ValueError, match=r"units\.csv has no column\(s\) max_class_drop"):
        cards.build_layer(sources, "m", "l", "unit", 2, 2)


def test_missing_image_leaves_no_images_folder(tmp_path: Path) -> None:
    listing = tmp_path / "x.images.json"
    listing.write_text(
        json.dumps([{"source": str(tmp_path), "relative": "gone.png", "target": "images/a/g.png"}])
    )
    out = tmp_path / "browser" / "images"
    with pytest.raises(ValueError, match="gone.png"):
        page.copy_images([listing], out)
    assert not out.exists() and not list(out.parent.glob(".*partial"))


def test_bad_image_list_is_named(tmp_path: Path) -> None:
    listing = tmp_path / "x.images.json"
    listing.write_text('[{"source": "a"}]')
    with pytest.raises(ValueError, match=r"x\.images\.json"):
        page.copy_images([listing], tmp_path / "images")


# --- the tiny run's browser ----------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows as its own text."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def layer_data(run: Path, model: str, layer: str, basis: str) -> dict:
    """The data a browser script registers."""
    text = (run / f"results/browser/data/{model}/{layer}/{basis}.js").read_text()
    prefix, suffix = "unitBrowser.register(", ");\n"
    assert text.startswith(prefix) and text.endswith(suffix)
    return json.loads(text[len(prefix) : -len(suffix)])


def slow_upsample(activation: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling, align_corners=False, one output pixel at a time."""
    h, w = activation.shape
    out = np.zeros((height, width))
    for i in range(height):
        y = max((i + 0.5) * h / height - 0.5, 0.0)
        y0 = min(int(math.floor(y)), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(width):
            x = max((j + 0.5) * w / width - 0.5, 0.0)
            x0 = min(int(math.floor(x)), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = (1 - fx) * activation[y0, x0] + fx * activation[y0, x1]
            bottom = (1 - fx) * activation[y1, x0] + fx * activation[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.workflow
@pytest.mark.parametrize("basis", ["unit", "rot7"])
def test_rows_and_class_view_are_the_tables_text(tiny_run: Path, basis: str) -> None:
    folder = tiny_run / f"results/plain/features.relu5/{basis}"
    data = layer_data(tiny_run, "plain", "features.relu5", basis)
    units = read_rows(folder / "units.csv")
    names = [column[0] for column in data["columns"]]
    assert data["rows"] == [[row[c] for c in names] for row in units]
    assert {"max_class_drop", "overall_drop", "iou", "is_detector"} <= set(names)
    drops = read_rows(folder / "class_drops.csv")
    for view in data["classes"]:
        ranked = sorted(
            (r for r in drops if math.isfinite(float(r[view["class"]]))),
            key=lambda r: (-float(r[view["class"]]), int(r["unit"])),
        )[:10]
        assert view["units"] == [[int(r["unit"]), r[view["class"]]] for r in ranked]
        assert bool(view["curve"]) == (basis == "unit")
    for unit, card in enumerate(data["cards"]):
        row = units[unit]
        listed = row["top5_hurt_classes"].split(";")[:5]
        assert card["hurt"] == [[name, drops[unit][name]] for name in listed]


@pytest.mark.workflow
@pytest.mark.parametrize("basis", ["unit", "rot7"])
def test_card_images_are_the_top_images_with_their_masks(tiny_run: Path, basis: str) -> None:
    """Eval images by a_u(x) from the stored maps (spatial mean, rotated here), concept images
    as the IoU job ranked them, masks from a loop-by-loop bilinear upsampling."""
    run = tiny_run / "results"
    data = layer_data(tiny_run, "plain", "features.relu5", basis)
    with h5py.File(run / "plain/activations/eval/features.relu5.h5") as store:
        maps = store["layers/features.relu5/maps"][:].astype(np.float64)
        paths = [p.decode() for p in store["paths"]]
    with h5py.File(run / "plain/activations/concept/features.relu5.h5") as store:
        concept_maps = store["layers/features.relu5/maps"][:].astype(np.float64)
    with h5py.File(run / f"plain/features.relu5/{basis}/concepts.h5") as concepts:
        thresholds = concepts["thresholds"][:]
        top_images = concepts["top_images"][:]
    channels = maps.shape[1]
    rotation = np.eye(channels) if basis == "unit" else haar_rotation(channels, 7)
    a_u = np.einsum("jc,nchw->nj", rotation, maps) / (maps.shape[2] * maps.shape[3])
    images = [row["image"] for row in read_rows(run / "world/broden/index.csv")]
    for unit, card in enumerate(data["cards"]):
        shown = [paths.index(i["src"].split("/", 2)[2]) for i in card["eval_images"]]
        assert len(shown) == len(set(shown)) == 4
        values = a_u[shown, unit]
        assert np.all(np.diff(values) <= 1e-6)  # largest first (float32 store means)
        others = np.delete(a_u[:, unit], shown)
        assert np.all(others <= values.min() + 1e-6)  # no image left out scores higher
        ranked = [int(r) for r in top_images[unit][:4] if r >= 0]
        assert [i["src"].split("/", 2)[2] for i in card["concept_images"]] == [
            images[r] for r in ranked
        ]
        for image, row in zip(card["concept_images"], ranked, strict=True):
            activation = np.einsum("c,chw->hw", rotation[unit], concept_maps[row])
            activation = activation.astype(np.float32).astype(np.float64)
            mask = slow_upsample(activation, image["height"], image["width"]) > thresholds[unit]
            assert np.array_equal(decode_uri(image["overlay"])[..., 3] > 0, mask)


@pytest.mark.workflow
def test_images_copied_once_bytes_unchanged(tiny_run: Path) -> None:
    browser = tiny_run / "results/browser"
    targets = set()
    for listing in sorted((browser / "data").rglob("*.images.json")):
        for item in json.loads(listing.read_text()):
            targets.add(item["target"])
            copied = browser / item["target"]
            source = tiny_run / item["source"] / item["relative"]  # run-relative folders
            assert copied.read_bytes() == source.read_bytes()
    assert targets
    on_disk = {p.relative_to(browser).as_posix() for p in (browser / "images").rglob("*.png")}
    assert on_disk == targets


# --- the page in Chromium ------------------------------------------------------------------

PAGE_DRIVER = """
(async function () {
  const out = { errors: window.__reportCheckErrors, steps: {} };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const until = async (probe, what) => {
    for (let i = 0; i < 400; i++) { const v = probe(); if (v) return v; await sleep(25); }
    throw new Error("timed out waiting for " + what);
  };
  const $ = (id) => document.getElementById(id);
  const table = () => Array.from(document.querySelectorAll("#units tbody tr"))
    .map((tr) => Array.from(tr.children).map((td) => td.textContent));
  const headers = () => Array.from(document.querySelectorAll("#units thead th"))
    .map((th) => th.dataset.column);
  const where = () => ({ model: $("model").value, layer: $("layer").value, basis: $("basis").value,
    total: Number($("unit-count").dataset.total), shown: Number($("unit-count").dataset.shown),
    headers: headers(), cells: table() });
  const pick = async (id, index) => {
    const select = $(id);
    select.value = select.options[index].value;
    select.dispatchEvent(new Event("change"));
    await window.unitBrowser.ready;
  };
  const cardImages = async () => {
    const images = Array.from(document.querySelectorAll("#card img"));
    for (const img of images) await img.decode();
    return images.map((img) => ({ src: img.getAttribute("src").slice(0, 80),
      kind: img.className, width: img.naturalWidth, height: img.naturalHeight,
      expectWidth: Number(img.dataset.width), expectHeight: Number(img.dataset.height) }));
  };
  try {
    await until(() => window.unitBrowser && window.unitBrowser.ready, "the page");
    await window.unitBrowser.ready;
    out.steps.first = where();
    document.querySelector('th[data-column="max_class_drop"]').click();
    out.steps.sorted = where();
    $("detectors-only").click();
    out.steps.detectors = where();
    $("detectors-only").click();
    document.querySelector("#units tbody tr").click();
    await until(() => !$("card").hidden, "the unit card");
    out.steps.card = { unit: Number($("card").dataset.unit), images: await cardImages(),
      bars: document.querySelectorAll("#card svg.bars rect").length };
    $("card-next").click();
    out.steps.next = { unit: Number($("card").dataset.unit) };
    await pick("layer", 1);
    out.steps.layer = where();
    await pick("basis", 1);
    out.steps.basis = where();
    $("show-classes").click();
    await pick("class-choice", 1);
    out.steps.classes = { basis: $("basis").value, cls: $("class-choice").value,
      units: Array.from(document.querySelectorAll("#class-units tr[data-unit]"))
        .map((tr) => Number(tr.dataset.unit)),
      curve: !!document.querySelector("#class-curve svg") };
    await pick("basis", 0);
    out.steps.unitClasses = { cls: $("class-choice").value,
      curve: !!document.querySelector("#class-curve svg") };
    document.querySelector("#class-units tr[data-unit]").click();
    out.steps.classCard = { unit: Number($("card").dataset.unit), images: await cardImages() };
    out.done = true;
  } catch (err) {
    out.failure = String(err && err.stack || err);
  }
  return out;
})()
"""


def drive_page(html: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """Open the page in headless Chromium, run PAGE_DRIVER, return what it saw."""
    chromium = rc.find_chromium()
    with rc.DevToolsPipe(chromium, profile, timeout=120) as cdp:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        cdp.call("Page.enable", session=session)
        cdp.call("Page.addScriptToEvaluateOnNewDocument", {"source": rc.ERROR_HOOK}, session)
        metrics = {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        cdp.call("Emulation.setDeviceMetricsOverride", metrics, session)
        cdp.call("Page.navigate", {"url": html.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired", session)
        reply = cdp.call(
            "Runtime.evaluate",
            {"expression": PAGE_DRIVER, "awaitPromise": True, "returnByValue": True},
            session,
        )
        assert "exceptionDetails" not in reply, reply
        if screenshot is not None:
            shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
            screenshot.write_bytes(base64.b64decode(shot))
        return reply["result"]["value"]


@pytest.mark.workflow
def test_page_in_chromium(tiny_run: Path, tmp_path: Path) -> None:
    results = tiny_run / "results"
    seen = drive_page(results / "browser/index.html", tmp_path / "profile")
    assert seen.get("done"), seen.get("failure")
    assert seen["errors"] == []
    steps = seen["steps"]

    def table(step: dict) -> list[dict[str, str]]:
        return read_rows(results / f"{step['model']}/{step['layer']}/{step['basis']}/units.csv")

    first = steps["first"]
    assert (first["model"], first["layer"], first["basis"]) == ("plain", "features.relu4", "unit")
    rows = table(first)
    assert first["total"] == first["shown"] == len(rows)
    assert first["cells"] == [[row[c] for c in first["headers"]] for row in rows]
    # sorted by M_u, largest first (ties by unit), as the table's numbers say
    order = sorted(rows, key=lambda r: (-float(r["max_class_drop"]), int(r["unit"])))
    assert [int(c[0]) for c in steps["sorted"]["cells"]] == [int(r["unit"]) for r in order]
    detectors = steps["detectors"]
    assert detectors["shown"] == sum(r["is_detector"] == "True" for r in rows)
    at = detectors["headers"].index("is_detector")
    assert all(cells[at] == "True" for cells in detectors["cells"])
    card = steps["card"]
    assert card["unit"] == int(order[0]["unit"])
    assert card["bars"] >= 1
    kinds = [image["kind"] for image in card["images"]]
    assert kinds.count("picture") == 4 + kinds.count("overlay")  # 4 eval images + concept ones
    assert kinds.count("overlay") >= 1
    for image in card["images"] + steps["classCard"]["images"]:
        assert image["width"] > 0 and image["height"] > 0
        assert (image["width"], image["height"]) == (image["expectWidth"], image["expectHeight"])
    with Image.open(next((results / "browser/images").rglob("*.png"))) as any_image:
        assert any_image.size == (32, 32)  # the tiny world's images, decoded at their size
    assert steps["next"]["unit"] == int(order[1]["unit"])
    for step in (steps["layer"], steps["basis"]):
        rows = table(step)
        assert step["total"] == step["shown"] == len(rows)
        assert step["cells"] == [[row[c] for c in step["headers"]] for row in rows]
    assert steps["layer"]["layer"] == "features.relu5"
    assert steps["basis"]["basis"] == "rot7"
    classes = steps["classes"]
    drops = read_rows(results / "plain/features.relu5/rot7/class_drops.csv")
    ranked = sorted(drops, key=lambda r: (-float(r[classes["cls"]]), int(r["unit"])))
    assert classes["units"] == [int(r["unit"]) for r in ranked[:10]]
    assert not classes["curve"] and steps["unitClasses"]["curve"]


MISSING_DRIVER = """
(async function () {
  await window.unitBrowser.ready;
  const layer = document.getElementById("layer");
  layer.value = layer.options[1].value;
  layer.dispatchEvent(new Event("change"));
  await window.unitBrowser.ready;
  const alert = document.getElementById("load-error");
  return { hidden: alert.hidden, text: alert.textContent, errors: window.__reportCheckErrors };
})()
"""


def evaluate_page(html: Path, profile: Path, expression: str) -> dict:
    """Open the page in headless Chromium and return what `expression` resolves to."""
    with rc.DevToolsPipe(rc.find_chromium(), profile, timeout=120) as cdp:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        cdp.call("Page.enable", session=session)
        cdp.call("Page.addScriptToEvaluateOnNewDocument", {"source": rc.ERROR_HOOK}, session)
        cdp.call("Page.navigate", {"url": html.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired", session)
        reply = cdp.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        assert "exceptionDetails" not in reply, reply
        return reply["result"]["value"]


@pytest.mark.workflow
def test_a_missing_data_script_is_named_on_the_page(tiny_run: Path, tmp_path: Path) -> None:
    """A browser folder copied without one entry's script says which, with no uncaught error."""
    copy = tmp_path / "browser"
    shutil.copytree(tiny_run / "results/browser", copy)
    (copy / "data/plain/features.relu5/unit.js").unlink()
    seen = evaluate_page(copy / "index.html", tmp_path / "profile", MISSING_DRIVER)
    assert not seen["hidden"] and "data/plain/features.relu5/unit.js" in seen["text"], seen
    assert seen["errors"] == []
