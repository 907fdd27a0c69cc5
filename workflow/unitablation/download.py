"""Downloads with checksums: fetch with retries, verify while streaming, install atomically.

An item is one file (a checkpoint, a tar kept whole) or one archive (zip or tar, extracted into a
folder). Items come from the shipped table `resources/downloads.yaml`, entries of which config
`downloads` may override or extend. Every item is verified against whatever checksums it
pins: `sha256` (full), `sha256_prefix` (what torchvision's file names carry), `md5` (what
ImageNet publishes). An item without any checksum is refused unless the caller allows it; its
sha256 is then logged so it can be pinned.

Nothing half-done is ever left under an output name: a download goes to a hidden temporary name
beside the output, an archive is extracted into a hidden temporary folder, and only a verified,
complete result is renamed into place. On any failure the temporary files are removed.

Progress and facts go to this module's logger at INFO, failed attempts and accepted unpinned
files at WARNING. The module knows files, URLs, checksums and archives, not the workflow engine
that schedules the downloads: naming targets and command lines is the caller's business.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

LOG = logging.getLogger(__name__)
#: Where raw items land (relative to the working directory), one entry per item.
DOWNLOAD_ROOT = "resources/downloads"
KINDS = ("file", "archive")
#: Attempts after the first, per URL; the wait doubles from BACKOFF_S after each failed round.
RETRIES = 4
BACKOFF_S = 1.0
TIMEOUT_S = 60.0
CHUNK = 1 << 20
#: HTTP statuses worth retrying; any other error status fails that URL at once.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
ITEM_KEYS = frozenset(
    {"urls", "kind", "filename", "sha256", "sha256_prefix", "md5", "subdir", "convert", "note"}
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")

Progress = Callable[[int | None, str], Any]


class DownloadError(RuntimeError):
    """An item could not be fetched from any of its URLs."""


class ChecksumError(DownloadError):
    """A fetched file does not match the checksum the item pins."""


class UnpinnedError(DownloadError):
    """An item pins no checksum and unpinned downloads are not allowed."""


@dataclass(frozen=True)
class DownloadItem:
    """One downloadable item, checked: where it comes from, what it must hash to, where it goes."""

    name: str
    kind: str
    filename: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None
    subdir: str | None = None
    convert: Mapping[str, Any] | None = None
    note: str = ""

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any]) -> DownloadItem:
        """Build and check an item from its table entry; ValueError naming the item and key."""
        where = f"download item {name!r}"
        if not _NAME.match(name):
            raise ValueError(f"{where}: name must match {_NAME.pattern}")
        unknown = sorted(set(entry) - ITEM_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(ITEM_KEYS)}")
        kind = entry.get("kind", "file")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        urls = entry.get("urls") or ()
        if isinstance(urls, str) or not all(isinstance(u, str) and u for u in urls):
            raise ValueError(f"{where}: urls must be a list of URLs or paths, got {urls!r}")
        filename = entry.get("filename") or (url_basename(urls[0]) if urls else "")
        if not filename or "/" in filename or filename.startswith("."):
            raise ValueError(f"{where}: needs a plain file name (key filename), got {filename!r}")
        digests = {}
        for key, sizes in (("sha256", (64,)), ("sha256_prefix", range(6, 65)), ("md5", (32,))):
            value = entry.get(key)
            if value is not None:
                value = str(value).lower()
                if not _HEX.match(value) or len(value) not in sizes:
                    raise ValueError(f"{where}: {key} must be {sizes} hex digits, got {value!r}")
            digests[key] = value
        subdir = entry.get("subdir")
        if subdir is not None:
            parts = PurePosixPath(subdir).parts
            if kind != "archive" or not parts or subdir.startswith("/") or ".." in parts:
                raise ValueError(f"{where}: subdir must be a relative folder of an archive")
        convert = entry.get("convert")
        if convert is not None and (kind != "file" or not isinstance(convert, Mapping)):
            raise ValueError(f"{where}: convert is a mapping, for checkpoint files only")
        return cls(
            name=name,
            kind=kind,
            filename=filename,
            urls=tuple(urls),
            subdir=subdir,
            convert=dict(convert) if convert is not None else None,
            note=str(entry.get("note") or ""),
            **digests,
        )

    @property
    def pinned(self) -> bool:
        """Whether the item names at least one checksum to verify against."""
        return any((self.sha256, self.sha256_prefix, self.md5))

    def path(self, root: str = DOWNLOAD_ROOT) -> str:
        """Install location: `<root>/<name>/<filename>`, or the folder `<root>/<name>` (archive)."""
        if self.kind == "file":
            return f"{root}/{self.name}/{self.filename}"
        return f"{root}/{self.name}"

    def expected(self) -> dict[str, str]:
        """The checksums this item pins, by key."""
        pins = {"sha256": self.sha256, "sha256_prefix": self.sha256_prefix, "md5": self.md5}
        return {key: value for key, value in pins.items() if value}

    def settings(self, allow_unpinned: bool) -> dict[str, Any]:
        """Exactly what fetching reads; `allow_unpinned` only where it matters (no pin)."""
        settings: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "filename": self.filename,
            "urls": list(self.urls),
            **self.expected(),
        }
        if self.subdir:
            settings["subdir"] = self.subdir
        if not self.pinned:
            settings["allow_unpinned"] = bool(allow_unpinned)
        return settings

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> tuple[DownloadItem, bool]:
        """Inverse of settings: the item and whether unpinned downloads are allowed."""
        entry = {
            key: value for key, value in settings.items() if key not in ("name", "allow_unpinned")
        }
        return cls.from_entry(settings["name"], entry), bool(settings.get("allow_unpinned", False))


def url_basename(url: str) -> str:
    """Last path component of a URL or local path (query and fragment dropped)."""
    return PurePosixPath(urllib.parse.urlparse(url).path).name


def load_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read the shipped item table (YAML mapping of item name to entry)."""
    import yaml  # only reading the table needs YAML; fetching and installing do not

    with open(path) as handle:
        table = yaml.safe_load(handle) or {}
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"{path}: expected a mapping of item name to entry")
    return table


def merge_items(
    table: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, DownloadItem]:
    """Items of the table with config overrides applied key by key (new names add items)."""
    overrides = overrides or {}
    merged = {}
    for name in [*table, *(n for n in overrides if n not in table)]:
        entry = {**table.get(name, {}), **(overrides.get(name) or {})}
        merged[name] = DownloadItem.from_entry(name, entry)
    return merged


def load_items(
    table_path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, DownloadItem]:
    """The shipped table at `table_path` with config overrides applied, every item checked."""
    return merge_items(load_table(table_path), overrides)


def check_fetchable(item: DownloadItem, allow_unpinned: bool) -> None:
    """Fail before any request when fetching cannot succeed: no URL, or no pin and not allowed.

    Raises DownloadError (no URL) or UnpinnedError, each saying what to set.
    """
    if not item.urls:
        raise DownloadError(missing_url_message(item))
    if not item.pinned and not allow_unpinned:
        raise UnpinnedError(unpinned_message(item))


def unpinned_message(item: DownloadItem) -> str:
    """Why an unpinned item is refused, and how to proceed."""
    return (
        f"download item {item.name!r} pins no checksum (sha256, sha256_prefix or md5) in "
        f"resources/downloads.yaml or config downloads.{item.name}, so its content cannot be "
        "verified. For a first download set the config key allow_unpinned_downloads to true; "
        f"the download log then shows the file's sha256: pin it as downloads.{item.name}.sha256 "
        "(or in resources/downloads.yaml) and drop the flag."
        + (f" Note: {item.note}" if item.note else "")
    )


def unpinned_accepted_message(item: DownloadItem, sha256: str) -> str:
    """What to pin after an unpinned download was accepted."""
    return (
        f"{item.name}: UNPINNED download accepted (allow_unpinned_downloads). To pin it, "
        f"add `sha256: {sha256}` to item {item.name} (resources/downloads.yaml "
        f"or config downloads.{item.name}) and drop allow_unpinned_downloads."
    )


def missing_url_message(item: DownloadItem) -> str:
    """Why an item without URLs cannot be fetched, and what to set."""
    return (
        f"download item {item.name!r} has no URL: set downloads.{item.name}.urls to a list "
        f"of URLs or local paths of {item.filename}." + (f" {item.note}" if item.note else "")
    )


# ---------------------------------------------------------------------------------------------
# Hashing.


class Digests:
    """Running sha256 (always) and md5 (when asked), fed block by block while streaming."""

    def __init__(self, md5: bool = False) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def update(self, block: bytes) -> None:
        """Feed the next block of the file."""
        self._sha256.update(block)
        if self._md5 is not None:
            self._md5.update(block)

    def hexdigests(self) -> dict[str, str]:
        """sha256 (and md5) of everything fed so far."""
        result = {"sha256": self._sha256.hexdigest()}
        if self._md5 is not None:
            result["md5"] = self._md5.hexdigest()
        return result


def file_digests(path: str | Path, md5: bool = False) -> dict[str, str]:
    """sha256 (and md5) of a file, streamed."""
    digests = Digests(md5)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digests.update(block)
    return digests.hexdigests()


def mismatches(item: DownloadItem, actual: Mapping[str, str]) -> list[str]:
    """Human-readable differences between the item's pins and a file's digests (empty if none)."""
    problems = []
    if item.sha256 and actual["sha256"] != item.sha256:
        problems.append(f"expected sha256 {item.sha256}, got {actual['sha256']}")
    if item.sha256_prefix and not actual["sha256"].startswith(item.sha256_prefix):
        problems.append(f"expected a sha256 starting {item.sha256_prefix}, got {actual['sha256']}")
    if item.md5 and actual.get("md5") != item.md5:
        problems.append(f"expected md5 {item.md5}, got {actual.get('md5')}")
    return problems


# ---------------------------------------------------------------------------------------------
# Fetching.


def is_local(url: str) -> bool:
    """Whether a source is a local file: a plain path or a file:// URL."""
    scheme = urllib.parse.urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(url: str) -> Path:
    """The file a local source names (relative paths: from the working directory)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(url).expanduser()


def _is_transient(error: BaseException) -> bool:
    """Whether an error is worth retrying (network trouble, server busy), not a hard refusal."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code in TRANSIENT_STATUS
    return isinstance(
        error,
        urllib.error.URLError
        | TimeoutError
        | socket.timeout
        | ConnectionError
        | http.client.HTTPException
        | IncompleteDownload,
    )


class IncompleteDownload(OSError):
    """The server closed the connection before sending the announced length."""


def _stream(
    source: BinaryIO, target: BinaryIO, digests: Digests, total: int | None, bar: Any
) -> int:
    """Copy source to target block by block, hashing; return the byte count."""
    received = 0
    for block in iter(lambda: source.read(CHUNK), b""):
        target.write(block)
        digests.update(block)
        received += len(block)
        if bar is not None:
            bar.update(len(block))
    if total is not None and received != total:
        raise IncompleteDownload(f"received {received} of {total} bytes")
    return received


def _download_once(
    url: str, part: Path, md5: bool, timeout: float, progress: Progress | None
) -> dict[str, str]:
    """Fetch `url` into `part` (overwritten), hashing on the fly; return the digests."""
    digests = Digests(md5)
    request = urllib.request.Request(url, headers={"User-Agent": "unitablation-download/1"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = progress(total, url) if progress else None
        try:
            _stream(response, out, digests, total, bar)
        finally:
            if bar is not None:
                bar.close()
    return digests.hexdigests()


def fetch(
    item: DownloadItem,
    part: Path,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    timeout_s: float = TIMEOUT_S,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, dict[str, str]]:
    """Download a remote item to `part`, trying each URL in turn, with retries; verify it.

    Returns the URL that served a verified file and its digests. A file failing its checksum
    is deleted and its URL dropped (the next mirror is tried); transient errors (timeouts,
    resets, 5xx, 429) are retried up to `retries` more rounds, waiting backoff_s, 2 x backoff_s,
    ... between rounds; other errors drop the URL. Raises ChecksumError when every URL that
    answered served a wrong file, else DownloadError listing each URL's last error.
    """
    live = [url for url in item.urls if not is_local(url)]
    errors: dict[str, str] = {}
    bad: dict[str, list[str]] = {}
    for attempt in range(retries + 1):
        for url in list(live):
            LOG.info(f"{item.name}: attempt {attempt + 1} of {retries + 1}: {url}")
            try:
                actual = _download_once(url, part, bool(item.md5), timeout_s, progress)
            except Exception as error:  # noqa: BLE001 - classified below
                part.unlink(missing_ok=True)
                errors[url] = f"{type(error).__name__}: {error}"
                LOG.warning(f"{item.name}: {url} failed: {errors[url]}")
                if not _is_transient(error):
                    live.remove(url)
                continue
            problems = mismatches(item, actual)
            if not problems:
                return url, actual
            part.unlink(missing_ok=True)
            bad[url] = problems
            live.remove(url)
            LOG.warning(f"{item.name}: {url}: checksum mismatch: {'; '.join(problems)}")
        if not live:
            break
        if attempt < retries:
            wait = backoff_s * 2**attempt
            LOG.info(f"{item.name}: retrying in {wait:.1f} s")
            sleep(wait)
    if bad:
        details = "; ".join(f"from {url}: {'; '.join(p)}" for url, p in bad.items())
        raise ChecksumError(
            f"checksum mismatch for download item {item.name!r} ({item.filename}): {details}. "
            "The file was deleted and nothing was installed. If the file changed upstream on "
            f"purpose, pin its new checksum in downloads.{item.name}."
        )
    details = "; ".join(f"{url}: {error}" for url, error in errors.items())
    raise DownloadError(
        f"could not download item {item.name!r} ({item.filename}) after {retries + 1} attempt(s) "
        f"per URL: {details}"
    )


def _verify_local(item: DownloadItem) -> tuple[Path, dict[str, str]]:
    """The first existing local source of an item, verified in place; ChecksumError if wrong."""
    for url in item.urls:
        if not is_local(url):
            continue
        path = local_path(url)
        if not path.is_file():
            LOG.info(f"{item.name}: local source {path} does not exist")
            continue
        LOG.info(f"{item.name}: verifying local file {path}")
        actual = file_digests(path, md5=bool(item.md5))
        problems = mismatches(item, actual)
        if problems:
            raise ChecksumError(
                f"checksum mismatch for download item {item.name!r}: local file {path}: "
                f"{'; '.join(problems)}. Nothing was installed."
            )
        return path.resolve(), actual
    raise DownloadError(f"download item {item.name!r}: none of its local sources exists")


# ---------------------------------------------------------------------------------------------
# Archives.


def _safe_member(name: str) -> PurePosixPath:
    """A member path that stays inside the extraction folder, or ValueError."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ValueError(f"archive member {name!r} would land outside the extraction folder")
    return path


def extract_archive(archive: Path, target: Path, progress: Progress | None = None) -> None:
    """Extract a zip or tar (any compression) into the existing folder `target`, safely.

    Members with absolute paths or `..`, and (for tar) links pointing outside, special files
    and device nodes are refused (tarfile's "data" filter).
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = handle.infolist()
            bar = progress(len(members), f"extract {archive.name}") if progress else None
            for member in members:
                _safe_member(member.filename)
                handle.extract(member, target)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        return
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is neither a zip nor a tar archive")
    with tarfile.open(archive) as handle:
        bar = progress(None, f"extract {archive.name}") if progress else None
        for member in handle:
            _safe_member(member.name)
            handle.extract(member, target, filter="data")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()


def _top_level(folder: Path) -> list[str]:
    """Names at the top of an extracted archive, sorted."""
    return sorted(entry.name for entry in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# Installing.


def _remove(path: Path) -> None:
    """Remove a file, link or folder if present."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _stale(folder: Path, prefix: str) -> Iterable[Path]:
    """Leftovers of earlier interrupted attempts (hidden temporaries) in `folder`."""
    if folder.is_dir():
        yield from (entry for entry in folder.iterdir() if entry.name.startswith(prefix))


def install(
    item: DownloadItem,
    output: str | Path,
    allow_unpinned: bool = False,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    timeout_s: float = TIMEOUT_S,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Fetch, verify and install an item at `output` (a file, or a folder for an archive).

    When one of the item's local sources (paths, file:// URLs) exists, it is used instead of
    the remote URLs and verified where it lies: a file item becomes a symbolic link to it, an
    archive is extracted from it. Returns the file's digests.
    """
    output = Path(output)
    check_fetchable(item, allow_unpinned)
    output.parent.mkdir(parents=True, exist_ok=True)
    tag = f".{item.name}.{item.filename}"
    for leftover in _stale(output.parent, tag):
        LOG.info(f"{item.name}: removing leftover {leftover}")
        _remove(leftover)
    part = output.parent / f"{tag}.part-{os.getpid()}"
    staging = output.parent / f"{tag}.extract-{os.getpid()}"
    try:
        local = [local_path(url) for url in item.urls if is_local(url)]
        if local and (len(local) == len(item.urls) or any(path.is_file() for path in local)):
            source, actual = _verify_local(item)
            url = str(source)
        else:
            url, actual = fetch(item, part, retries, backoff_s, timeout_s, progress, sleep)
            source = part
        LOG.info(f"{item.name}: sha256 {actual['sha256']} ({url})")
        if not item.pinned:
            LOG.warning(unpinned_accepted_message(item, actual["sha256"]))
        if output.is_dir() and not output.is_symlink() and not any(output.iterdir()):
            output.rmdir()  # an empty folder left by the scheduler
        if item.kind == "file":
            if source == part:
                os.replace(part, output)
            else:
                link = output.parent / f"{tag}.link-{os.getpid()}"
                link.symlink_to(source)
                os.replace(link, output)
            return actual
        staging.mkdir()
        extract_archive(Path(source), staging, progress)
        root = staging / item.subdir if item.subdir else staging
        if not root.is_dir():
            raise DownloadError(
                f"download item {item.name!r}: archive has no folder {item.subdir!r} "
                f"(subdir); its top level holds {_top_level(staging)}"
            )
        os.replace(root, output)
        LOG.info(f"{item.name}: extracted into {output}")
        return actual
    finally:
        for leftover in _stale(output.parent, tag):
            _remove(leftover)


def tqdm_progress(description: str) -> Progress:
    """A progress factory drawing tqdm bars suited to log files (bytes for downloads)."""
    from tqdm import tqdm

    def make(total: int | None, label: str) -> Any:
        unit = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
        if label.startswith("extract "):
            unit = {"unit": "file"}
        return tqdm(
            total=total,
            desc=f"{description} {label}"[:60],
            file=sys.stderr,
            mininterval=2.0,
            ncols=100,
            **unit,
        )

    return make
