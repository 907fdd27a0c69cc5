"""Screenshot of the unit browser as the README shows it: one (model, layer) of a finished run,
sorted by M_u, the first unit's card open. Headless Chromium over the DevTools protocol.

Usage: ``python tests/browser_screenshot.py results/browser/index.html out.png [--model plain]
[--layer features.relu5] [--basis unit]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

import report_check as rc

SETUP = """
(async function (model, layer, basis) {
  await window.unitBrowser.ready;
  for (const [id, value] of [["model", model], ["layer", layer], ["basis", basis]]) {
    const select = document.getElementById(id);
    if (!Array.from(select.options).some((o) => o.value === value)) {
      throw new Error(id + " " + value + " is not in the browser");
    }
    select.value = value;
    select.dispatchEvent(new Event("change"));
    await window.unitBrowser.ready;
  }
  document.querySelector('th[data-column="max_class_drop"]').click();
  document.querySelector("#units tbody tr").click();
  for (const img of document.querySelectorAll("#card img")) await img.decode();
  return document.getElementById("card").dataset.unit;
})(%s)
"""


def screenshot(html: Path, out: Path, model: str, layer: str, basis: str) -> str:
    """Open the page, choose the entry, sort by M_u, open the top unit; write a PNG of it."""
    chromium = rc.find_chromium()
    with (
        tempfile.TemporaryDirectory() as profile,
        rc.DevToolsPipe(chromium, Path(profile), timeout=120) as cdp,
    ):
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        cdp.call("Page.enable", session=session)
        metrics = {"width": 1400, "height": 860, "deviceScaleFactor": 1, "mobile": False}
        cdp.call("Emulation.setDeviceMetricsOverride", metrics, session)
        cdp.call("Page.navigate", {"url": html.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired", session)
        arguments = ", ".join(json.dumps(v) for v in (model, layer, basis))
        reply = cdp.call(
            "Runtime.evaluate",
            {"expression": SETUP % arguments, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"the page failed: {reply['exceptionDetails']}")
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    out.write_bytes(base64.b64decode(shot))
    return str(reply["result"]["value"])


def main(argv: list[str] | None = None) -> int:
    """Write the screenshot; exit 1 with the reason when the page or Chromium fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="plain")
    parser.add_argument("--layer", default="features.relu5")
    parser.add_argument("--basis", default="unit")
    args = parser.parse_args(argv)
    try:
        unit = screenshot(args.html, args.out, args.model, args.layer, args.basis)
    except (RuntimeError, AssertionError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.model} {args.layer} {args.basis}, unit {unit} open)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
