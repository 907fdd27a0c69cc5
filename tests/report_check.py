"""Check a Snakemake 9 HTML report: embedded figures and tables, and a headless Chromium render.

How Snakemake 9 builds ``snakemake --report results/report.html``: a single self-contained page
whose ``<div id="app">`` is empty; a React app (React, vega and the report's components are all
inlined as ``<script>`` tags) fills it in the browser.  The data lives in JavaScript literals,
each in its own ``<script id=...>`` tag:

* ``<script id="results">var results = {...};`` -- one JSON object keyed by result path with
  ``name``, ``labels``, ``caption`` (the ``.rst`` caption already rendered to HTML by docutils),
  ``mime_type``, ``size`` and ``data_uri``: the whole file as
  ``data:<mime>;charset=utf8;filename=<name>;base64,<payload>``.
* ``<script id="categories">var categories = {...};`` -- ``{category: {subcategory: [path]}}``;
  results without a category/subcategory land in ``"Other"``.

The check has three parts:

1. Static: parse those two literals, decode every ``image/png`` result with PIL (valid, at least
   ``MIN_FIGURE_SIDE`` pixels a side, not one flat colour), parse every ``text/csv`` result, and
   check captions and categories.
2. Render: run the unmodified report in headless Chromium (``--dump-dom``, ``--screenshot``) and
   require DOM that only exists once the app ran: the loading screen hidden by the page's last
   inline script, a ``<nav>`` inside ``#app``, the menu items Workflow/Statistics/About and one
   menu item per category (``Results`` when there is only one).  The raw HTML has none of these
   outside ``<script>`` text, so it cannot pass.  The screenshot must not be blank.
3. Figures: open the report again in headless Chromium, driven over the DevTools protocol on
   ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3/4; no websocket library, no change
   to the report).  ``FIGURE_DRIVER`` clicks through the real UI as a user would (each category,
   subcategory and each row's view button), waits for the displayed ``<img>`` to decode and
   returns what it saw.  Figures the click-through cannot reach (a label toggle hides one
   variant per row) are shown with the ``app.setView`` call the view button makes.  Every
   embedded figure must display at the pixel size PIL decoded, with no uncaught JavaScript
   error.  (``--virtual-time-budget`` cannot be used for this part: while an image decodes off
   the main thread, virtual time jumps straight to the end of the budget.)

Usage: ``python tests/report_check.py results/report.html [--expect-figures N] [--screenshot
out.png]``.  Chromium comes from the Debian package ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import csv
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image, ImageStat, UnidentifiedImageError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get install chromium"
MIN_FIGURE_SIDE = 32
MIN_SCREENSHOT_STD = 8.0
WINDOW_SIZE = (1400, 900)
MENU_ITEMS = ("Workflow", "Statistics", "About")

# Added to every new document before the page's scripts: records uncaught errors.
ERROR_HOOK = """
window.__reportCheckErrors = [];
window.addEventListener("error", function (ev) {
  window.__reportCheckErrors.push(String(ev.message) + " (" + ev.filename + ":" + ev.lineno + ")");
});
window.addEventListener("unhandledrejection", function (ev) {
  window.__reportCheckErrors.push("unhandled rejection: " + String(ev.reason));
});
"""

# Evaluated in the loaded report: clicks through the UI and displays every image result.
FIGURE_DRIVER = """
(async function () {
  const out = { done: false, displayed: {}, failures: [], errors: window.__reportCheckErrors };
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const until = async (probe, what) => {
    for (let i = 0; i < 400; i++) {
      const value = probe();
      if (value) return value;
      await sleep(25);
    }
    throw new Error("timed out waiting for " + what);
  };
  const menuLink = (text) => Array.from(document.querySelectorAll("#app nav a span"))
    .filter((span) => span.textContent === text).map((span) => span.closest("a"))[0];
  const follow = async (text) => {
    const link = await until(() => menuLink(text), "menu item " + text);
    link.click();
    await until(() => !link.isConnected, "the menu to leave " + text);
  };
  const contentImg = () => document.querySelector("#app > div > div.grow img");
  const isImage = (path) => String(results[path].mime_type).startsWith("image/");
  const show = async (path, via) => {
    const img = await until(() => {
      const im = contentImg();
      return im && im.getAttribute("src") === results[path].data_uri ? im : null;
    }, "image " + path);
    try { await img.decode(); } catch (err) { out.failures.push(path + ": decode failed: " + err); }
    const box = img.getBoundingClientRect();
    out.displayed[path] = {
      via: via, width: img.naturalWidth, height: img.naturalHeight,
      shownWidth: Math.round(box.width), shownHeight: Math.round(box.height),
    };
  };
  try {
    await until(() => menuLink("Workflow"), "the report menu");
    for (const category of Object.keys(categories).sort()) {
      for (const sub of Object.keys(categories[category]).sort()) {
        if (!categories[category][sub].some(isImage)) continue;
        app.setView({ navbarMode: "menu" });
        await until(() => menuLink("Workflow"), "the report menu");
        await follow(Object.keys(categories).length === 1 ? "Results" : category);
        if (Object.keys(categories[category]).length > 1) await follow(sub);
        await until(() => document.querySelector("#app nav tbody tr"), "results of " + sub);
        const rows = document.querySelectorAll("#app nav tbody tr").length;
        for (let i = 0; i < rows; i++) {
          const row = document.querySelectorAll("#app nav tbody tr")[i];
          const button = row && row.querySelector("div[role=group] a");
          if (!button || button.getAttribute("href") !== "#") continue;
          button.click();
          const path = await until(() => app.state.content === "img" && app.state.resultPath
            && !(app.state.resultPath in out.displayed) ? app.state.resultPath : null,
            "row " + i + " of " + category + "/" + sub + " to show an image");
          await show(path, "click");
        }
      }
    }
    for (const path of Object.keys(results).filter(isImage)) {
      if (path in out.displayed) continue;
      app.setView({ content: "img", contentPath: results[path].data_uri, resultPath: path });
      await show(path, "setView");
    }
    out.done = true;
  } catch (err) {
    out.failures.push(String(err));
  }
  return out;
})()
"""


class ChromiumNotFoundError(FileNotFoundError):
    """No Chromium or Chrome executable could be found."""


@dataclass
class EmbeddedResult:
    """One result embedded in the report, with what decoding it showed."""

    path: str
    name: str
    mime: str
    category: str
    subcategory: str
    nbytes: int
    caption: str
    width: int = 0
    height: int = 0
    rows: int = 0


@dataclass
class ReportCheck:
    """What check_report found: embedded results, categories and render evidence."""

    html: Path
    figures: list[EmbeddedResult]
    tables: list[EmbeddedResult]
    others: list[EmbeddedResult]
    categories: dict[str, list[str]]
    markers: list[str] = field(default_factory=list)
    displayed: dict[str, dict[str, int | str]] = field(default_factory=dict)
    screenshot_std: float = 0.0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_figures(self) -> int:
        """Number of embedded PNG figures."""
        return len(self.figures)

    @property
    def n_tables(self) -> int:
        """Number of embedded CSV tables."""
        return len(self.tables)

    @property
    def n_categories(self) -> int:
        """Number of result categories."""
        return len(self.categories)

    @property
    def n_clicked(self) -> int:
        """Number of figures displayed by clicking through the report UI."""
        return sum(1 for shown in self.displayed.values() if shown.get("via") == "click")

    def summary(self) -> str:
        """A short plain-text table of the findings."""
        rows = [
            ("report", str(self.html)),
            ("figures (PNG, decoded)", str(self.n_figures)),
            ("figures displayed", f"{len(self.displayed)} ({self.n_clicked} by clicking)"),
            ("tables (CSV)", str(self.n_tables)),
            ("other results", str(len(self.others))),
            ("categories", str(self.n_categories)),
        ]
        rows += [(f"  {cat}", ", ".join(subs)) for cat, subs in self.categories.items()]
        rows += [
            ("render markers", str(len(self.markers))),
            ("screenshot std", f"{self.screenshot_std:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        rows += [("warning", text) for text in self.warnings]
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def find_chromium(chromium: str | None = None) -> str:
    """Return the Chromium executable to use, or raise ChromiumNotFoundError."""
    if chromium:
        found = shutil.which(chromium)
        if found is None:
            raise ChromiumNotFoundError(
                f"Chromium executable {chromium!r} not found; install the Debian package "
                f"'chromium' ({INSTALL_HINT})"
            )
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumNotFoundError(
        f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH); install the "
        f"Debian package 'chromium' ({INSTALL_HINT})"
    )


def js_literal(text: str, script_id: str) -> object:
    """Return the JSON value assigned in the report's ``<script id=script_id>`` tag."""
    tag = f'<script id="{script_id}">'
    start = text.find(tag)
    if start < 0:
        raise ValueError(f'no <script id="{script_id}"> in the report; not a Snakemake 9 report?')
    match = re.compile(r"\s*var\s+\w+\s*=\s*").match(text, start + len(tag))
    if match is None:
        raise ValueError(f'<script id="{script_id}"> does not start with "var name = "')
    try:
        value, _ = json.JSONDecoder().raw_decode(text, match.end())
    except json.JSONDecodeError as err:
        raise ValueError(f'<script id="{script_id}"> does not hold JSON: {err}') from err
    return value


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """Split a base64 data URI into its mime type and decoded bytes."""
    header, sep, payload = uri.partition(",")
    if not header.startswith("data:") or not sep or not header.endswith(";base64"):
        raise ValueError(f"not an embedded base64 data URI: {uri[:80]!r}")
    try:
        return header[5:].split(";")[0], base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise ValueError(f"bad base64 payload: {err}") from err


def check_png(data: bytes, label: str, min_side: int = MIN_FIGURE_SIDE) -> tuple[int, int]:
    """Check PNG bytes decode to a non-trivial, non-flat image; return its size."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, size = im.format, im.size
            extrema = im.convert("L").getextrema()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"figure {label} is not a valid image: {err}") from err
    if fmt != "PNG":
        raise ValueError(f"figure {label} is {fmt}, not PNG")
    if min(size) < min_side:
        raise ValueError(f"figure {label} is only {size[0]}x{size[1]} pixels")
    if extrema[0] == extrema[1]:
        raise ValueError(f"figure {label} is one flat colour")
    return size


def check_csv(data: bytes, label: str) -> int:
    """Check CSV bytes parse with a header row; return the number of data rows."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"table {label} is not readable CSV: {err}") from err
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ValueError(f"table {label} is empty (no header row)")
    return len(rows) - 1


def inspect_report(html: Path, require_captions: bool = True) -> ReportCheck:
    """Statically check the results embedded in the report HTML."""
    text = Path(html).read_text(encoding="utf-8")
    results = js_literal(text, "results")
    categories = js_literal(text, "categories")
    if not isinstance(results, dict) or not isinstance(categories, dict):
        raise ValueError("results/categories in the report are not JSON objects")
    where: dict[str, tuple[str, str]] = {}
    for cat, subs in categories.items():
        for sub, paths in subs.items():
            for path in paths:
                if path not in results:
                    raise ValueError(f"category {cat}/{sub} lists {path}, which is not embedded")
                where[path] = (cat, sub)
    check = ReportCheck(
        html=Path(html),
        figures=[],
        tables=[],
        others=[],
        categories={cat: sorted(subs) for cat, subs in sorted(categories.items())},
    )
    problems = []
    for path, entry in sorted(results.items()):
        if path not in where:
            raise ValueError(f"result {path} is in no category")
        mime, data = decode_data_uri(entry.get("data_uri", ""))
        cat, sub = where[path]
        res = EmbeddedResult(
            path=path,
            name=entry.get("name", ""),
            mime=entry.get("mime_type") or mime,
            category=cat,
            subcategory=sub,
            nbytes=len(data),
            caption=entry.get("caption") or "",
        )
        if res.mime == "image/png":
            res.width, res.height = check_png(data, path)
            check.figures.append(res)
        elif res.mime == "text/csv":
            res.rows = check_csv(data, path)
            if res.rows == 0:
                check.warnings.append(f"table {path} has a header but no rows")
            check.tables.append(res)
        else:
            check.others.append(res)
        if not res.caption.strip():
            problems.append(f"{path} has no caption")
        elif "system-message" in res.caption:
            problems.append(f"{path}: docutils error in its caption")
        if cat == "Other":
            problems.append(f"{path} has no category (it is under 'Other')")
    if problems:
        if require_captions:
            raise ValueError("report results need fixing:\n  " + "\n  ".join(problems))
        check.warnings.extend(problems)
    return check


class _DomScan(HTMLParser):
    """Collect render markers from a DOM dump, ignoring script and style text."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, inside #app, inside nav)
        self.loading_hidden = False
        self.app_elements = 0
        self.app_nav = False
        self.nav_spans: list[str] = []
        self.rulegraph_marks = False
        self.rulegraph = False
        self._span: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Track whether we are inside #app and its nav."""
        attr = {key: value or "" for key, value in attrs}
        in_app, in_nav = self.stack[-1][1:] if self.stack else (False, False)
        if attr.get("id") == "loading-screen" and "none" in attr.get("style", ""):
            self.loading_hidden = True
        if in_app:
            self.app_elements += 1
            if tag == "nav":
                self.app_nav = in_nav = True
            if attr.get("id") == "rulegraph":
                self.rulegraph = True
            if tag in ("canvas", "svg") and "marks" in attr.get("class", "").split():
                self.rulegraph_marks = self.rulegraph_marks or self.rulegraph
        if tag == "span" and in_nav:
            self._span = []
        if tag not in self.VOID:
            self.stack.append((tag, in_app or attr.get("id") == "app", in_nav))

    def handle_endtag(self, tag: str) -> None:
        """Close the innermost open element with this tag."""
        if tag == "span" and self._span is not None:
            self.nav_spans.append("".join(self._span).strip())
            self._span = None
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        """Keep the text of nav spans."""
        if self._span is not None:
            self._span.append(data)


def render_markers(dom: str, categories: list[str]) -> list[str]:
    """Return the render markers found in a DOM dump; raise AssertionError if any is missing."""
    scan = _DomScan()
    scan.feed(dom)
    scan.close()
    wanted = list(MENU_ITEMS) + (["Results"] if len(categories) == 1 else list(categories))
    found, missing = [], []
    for ok, name in [
        (scan.loading_hidden, "#loading-screen hidden by the page's scripts"),
        (scan.app_elements >= 20, f"#app filled in ({scan.app_elements} elements)"),
        (scan.app_nav, "<nav> inside #app"),
        ("Snakemake" in scan.nav_spans and "Report" in scan.nav_spans, "title Snakemake Report"),
    ] + [(item in scan.nav_spans, f"menu item {item!r}") for item in wanted]:
        (found if ok else missing).append(name)
    if scan.rulegraph_marks:
        found.append("rule graph drawn by vega (#rulegraph .marks)")
    if missing:
        raise AssertionError(
            "the report's JavaScript app did not render in Chromium; missing: " + "; ".join(missing)
        )
    return found


def chromium_flags(profile: Path) -> list[str]:
    """Return the headless Chromium flags shared by both runs."""
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
    ]


def _stop(proc: subprocess.Popen) -> None:
    """Kill the process group of a Chromium we started, if still running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _log_tail(text: str) -> str:
    """Return the last meaningful lines of Chromium's stderr (dbus noise dropped)."""
    lines = [
        line
        for line in text.splitlines()
        if line.strip() and "dbus" not in line and "unexpected operator" not in line
    ]
    return "\n".join(lines[-10:])


def run_chromium(
    chromium: str,
    page: Path,
    screenshot: Path,
    profile: Path,
    timeout: float,
    budget_ms: int = 30_000,
) -> str:
    """Load page in headless Chromium, save a screenshot and return the dumped DOM."""
    cmd = [
        chromium,
        *chromium_flags(profile),
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise AssertionError(f"Chromium did not render {page} within {timeout:.0f} s") from None
    log = _log_tail(err.decode(errors="replace"))
    if proc.returncode != 0:
        raise AssertionError(f"Chromium exited with {proc.returncode}:\n{log}")
    if not screenshot.is_file():
        raise AssertionError(f"Chromium wrote no screenshot:\n{log}")
    return out.decode("utf-8", errors="replace")


class DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Chromium reads NUL-terminated JSON commands from fd 3 and writes replies and events to
    fd 4, so no websocket library is needed.  Use as a context manager.
    """

    def __init__(self, chromium: str, profile: Path, timeout: float) -> None:
        """Start Chromium with a DevTools pipe; every call must finish within timeout."""
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []
        cmd_read, cmd_write = os.pipe()
        out_read, out_write = os.pipe()
        # Chromium's ends go above 9 first, so that placing them on fds 3 and 4 is safe.
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_read, out_write)]
        os.close(cmd_read)
        os.close(out_write)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

        def place_fds() -> None:
            os.dup2(child[0], 3)
            os.dup2(child[1], 4)

        self.proc = subprocess.Popen(
            [chromium, *chromium_flags(profile), "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            close_fds=False,  # keep fds 3 and 4; Python's own fds are not inheritable
            preexec_fn=place_fds,  # noqa: PLW1509
        )
        for fd in child:
            os.close(fd)
        self._write = os.fdopen(cmd_write, "wb")
        self._read = out_read

    def __enter__(self) -> DevToolsPipe:
        """Return the client."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the browser and the pipes."""
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        _stop(self.proc)
        with contextlib.suppress(OSError):
            self._write.close()
        os.close(self._read)
        self._log.close()

    def log(self) -> str:
        """Return the tail of Chromium's output."""
        self._log.seek(0)
        return _log_tail(self._log.read().decode(errors="replace"))

    def _message(self, deadline: float) -> dict:
        """Read the next message from Chromium."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"Chromium did not answer within {self.timeout:.0f} s")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise AssertionError(f"Chromium closed the DevTools pipe:\n{self.log()}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Send one command and return its result, keeping events that arrive meanwhile."""
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self._write.write(json.dumps(message).encode() + b"\0")
            self._write.flush()
        except BrokenPipeError:
            raise AssertionError(f"Chromium is not running:\n{self.log()}") from None
        deadline = self.deadline if timeout is None else time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
            elif "error" in reply:
                raise AssertionError(f"DevTools {method} failed: {reply['error']}")
            else:
                return reply.get("result", {})

    def wait_event(self, method: str, session: str) -> dict:
        """Wait for an event of this method on this session."""
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._message(self.deadline))


def display_figures(chromium: str, html: Path, profile: Path, timeout: float) -> tuple[dict, bytes]:
    """Click through the report in Chromium; return the driver's findings and a screenshot."""
    with DevToolsPipe(chromium, profile, timeout) as cdp:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        cdp.call("Page.enable", session=session)
        cdp.call("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK}, session)
        metrics = {"width": WINDOW_SIZE[0], "height": WINDOW_SIZE[1]}
        metrics |= {"deviceScaleFactor": 1, "mobile": False}
        cdp.call("Emulation.setDeviceMetricsOverride", metrics, session)
        cdp.call("Page.navigate", {"url": html.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired", session)
        reply = cdp.call(
            "Runtime.evaluate",
            {"expression": FIGURE_DRIVER, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"the figure check script failed in the report: {text}")
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        return reply["result"].get("value") or {}, base64.b64decode(shot)


def screenshot_std(path: Path) -> float:
    """Return the grey-level standard deviation of a screenshot (0 for a blank page)."""
    with Image.open(path) as im:
        return float(ImageStat.Stat(im.convert("L")).stddev[0])


def check_report(
    html: Path,
    chromium: str | None = None,
    timeout: float = 120,
    *,
    expect_figures: int | None = None,
    expect_tables: int | None = None,
    screenshot: Path | None = None,
    require_captions: bool = True,
) -> ReportCheck:
    """Check the report's embedded results and that it renders, figures included, in Chromium."""
    started = time.monotonic()
    html = Path(html)
    if not html.is_file():
        raise FileNotFoundError(f"no report at {html}")
    exe = find_chromium(chromium)
    check = inspect_report(html, require_captions=require_captions)
    if expect_figures is not None and check.n_figures != expect_figures:
        raise AssertionError(f"expected {expect_figures} figures, the report has {check.n_figures}")
    if expect_tables is not None and check.n_tables != expect_tables:
        raise AssertionError(f"expected {expect_tables} tables, the report has {check.n_tables}")
    with tempfile.TemporaryDirectory(prefix="report_check_") as tmp:
        tmpdir = Path(tmp)
        shot = tmpdir / "report.png"
        dom = run_chromium(exe, html, shot, tmpdir / "profile1", timeout)
        check.markers = render_markers(dom, list(check.categories))
        check.screenshot_std = screenshot_std(shot)
        if check.screenshot_std < MIN_SCREENSHOT_STD:
            raise AssertionError(
                f"the screenshot of the report is blank (grey std {check.screenshot_std:.1f})"
            )
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, screenshot)
        if check.figures:
            left = max(10.0, timeout - (time.monotonic() - started))
            driven, figure_shot = display_figures(exe, html, tmpdir / "profile2", left)
            check_displayed(check, driven)
            if screenshot is not None:
                target = Path(screenshot)
                target.with_name(target.stem + "-figure.png").write_bytes(figure_shot)
    check.seconds = time.monotonic() - started
    return check


def check_displayed(check: ReportCheck, driven: dict) -> None:
    """Require every embedded figure displayed at its decoded size, without JS errors."""
    if driven.get("errors"):
        raise AssertionError("JavaScript errors in the report: " + "; ".join(driven["errors"]))
    if driven.get("failures") or not driven.get("done"):
        raise AssertionError(
            "displaying figures in the report failed: "
            + "; ".join(driven.get("failures") or ["the script did not finish"])
        )
    check.displayed = driven.get("displayed", {})
    bad = []
    for fig in check.figures:
        shown = check.displayed.get(fig.path)
        if shown is None:
            bad.append(f"{fig.path} never displayed")
        elif (shown["width"], shown["height"]) != (fig.width, fig.height):
            bad.append(
                f"{fig.path} displayed at natural size {shown['width']}x{shown['height']}, "
                f"decoded {fig.width}x{fig.height}"
            )
        elif not shown["shownWidth"] or not shown["shownHeight"]:
            bad.append(f"{fig.path} displayed with zero size on the page")
    if bad:
        raise AssertionError("figures do not display in the report:\n  " + "\n  ".join(bad))


def main(argv: list[str] | None = None) -> int:
    """Command line: check a report, print a short table, exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report, e.g. results/report.html")
    parser.add_argument("--expect-figures", type=int, help="exact number of PNG figures")
    parser.add_argument("--expect-tables", type=int, help="exact number of CSV tables")
    parser.add_argument(
        "--screenshot", type=Path, help="save the landing page here (and <stem>-figure.png)"
    )
    parser.add_argument("--chromium", help="Chromium executable (default: search PATH)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    parser.add_argument(
        "--allow-missing-captions",
        action="store_true",
        help="warn instead of failing on results without caption or category",
    )
    args = parser.parse_args(argv)
    try:
        check = check_report(
            args.html,
            args.chromium,
            args.timeout,
            expect_figures=args.expect_figures,
            expect_tables=args.expect_tables,
            screenshot=args.screenshot,
            require_captions=not args.allow_missing_captions,
        )
    except (AssertionError, ValueError, OSError) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(check.summary())
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
