"""A local HTTP server for tests, and the small stand-ins for real downloads that it serves.

The server binds 127.0.0.1 on a free port, in a daemon thread, and serves in-memory files; it can
fail on purpose (error statuses, truncated bodies). The stubs are generated: tiny zip/tar
archives, a Broden-layout set, Places365/ImageNet-like val archives and CSAIL-style checkpoints.
Nothing here reaches the network.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import threading
import types
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unitablation.broden import BrodenWriter, LabelDef
from unitablation.eval_sets import places365_folder_names


@dataclass
class Plan:
    """What the server holds and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> number of first requests answered with `fail_status`
    fail_first: dict[str, int] = field(default_factory=dict)
    fail_status: int = 503
    #: path -> number of first (successful) requests that send only half the body, while
    #: announcing the full length
    truncate_first: dict[str, int] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalServer:
    """Serve `plan.files` at http://127.0.0.1:<port>/<name>; count requests per path."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        handler = _make_handler(plan)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, name: str) -> str:
        """URL of a served file."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> LocalServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _make_handler(plan: Plan) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.lstrip("/")
            with plan.lock:
                plan.requests[path] += 1
                count = plan.requests[path]
            if count <= plan.fail_first.get(path, 0):
                self.send_error(plan.fail_status, "failing on purpose")
                return
            if path not in plan.files:
                self.send_error(404, "no such file")
                return
            body = plan.files[path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            failed = plan.fail_first.get(path, 0)
            truncated = count - failed <= plan.truncate_first.get(path, 0)
            self.wfile.write(body[: len(body) // 2] if truncated else body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Silence the per-request log lines."""

    return Handler


@contextmanager
def serving(files: dict[str, bytes] | None = None, **plan: object) -> Iterator[LocalServer]:
    """Context manager: a started LocalServer over `files`, stopped on exit."""
    server = LocalServer(Plan(files=dict(files or {}), **plan)).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Stubs.


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def jpeg(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def broden_zip(tmp_path: Path, top: str, n_images: int = 3, size: int = 16) -> bytes:
    """A tiny Broden-layout set (colour masks + a scene label), zipped under folder `top`."""
    root = tmp_path / "broden_src" / top
    writer = BrodenWriter(
        root,
        [LabelDef(1, "red", "color"), LabelDef(2, "blue", "color"), LabelDef(3, "beach", "scene")],
    )
    rng = np.random.default_rng(0)
    for k in range(n_images):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = rng.integers(1, 3, (size // 2, size // 2))
        writer.add(f"world/{k}", image, {"color": [mask]}, {"scene": [3]})
    writer.close()
    files = {
        f"{top}/{path.relative_to(root).as_posix()}": path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
    return zip_bytes(files)


def places_stub(classes: list[str], per_class: int = 2) -> tuple[bytes, bytes, dict[str, str]]:
    """val_256.tar, filelist tar and {image: folder} for a Places365-like val split."""
    categories = "".join(f"/{name[0]}/{name} {k}\n" for k, name in enumerate(classes))
    folders = places365_folder_names(categories)
    images, lines, truth = {}, [], {}
    number = 0
    for index, folder in enumerate(folders):
        for _ in range(per_class):
            number += 1
            file = f"Places365_val_{number:08d}.jpg"
            images[f"val_256/{file}"] = jpeg(number)
            lines.append(f"{file} {index}\n")
            truth[file] = folder
    filelist = tar_bytes(
        {
            "categories_places365.txt": categories.encode(),
            "places365_val.txt": "".join(lines).encode(),
            "places365_train_standard.txt": b"",
        }
    )
    return tar_bytes(images), filelist, truth


def imagenet_stub(tmp_path: Path) -> tuple[bytes, bytes, dict[str, str]]:
    """ILSVRC2012_img_val.tar, devkit tar.gz and {image: wnid}; ILSVRC IDs not in WNID order."""
    from scipy.io import savemat

    leaves = [(1, "n03000000"), (2, "n01000000"), (3, "n02000000")]
    rows = [*leaves, (4, "n00000001")]  # a non-leaf synset, as in the real meta.mat
    synsets = np.zeros(
        (len(rows), 1), dtype=[(k, "O") for k in ("ILSVRC2012_ID", "WNID", "words", "num_children")]
    )
    for k, (ilsvrc_id, wnid) in enumerate(rows):
        synsets[k, 0] = (np.array([[ilsvrc_id]]), wnid, "a, b", np.array([[0 if k < 3 else 3]]))
    buffer = io.BytesIO()
    savemat(buffer, {"synsets": synsets})
    ground_truth = [2, 1, 3, 3, 2, 1]
    devkit = tar_bytes(
        {
            "ILSVRC2012_devkit_t12/data/meta.mat": buffer.getvalue(),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": "".join(
                f"{i}\n" for i in ground_truth
            ).encode(),
        },
        mode="w:gz",
    )
    names = [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, len(ground_truth) + 1)]
    images = tar_bytes({name: jpeg(n) for n, name in enumerate(names)})
    wnid_of = dict(leaves)
    return images, devkit, {name: wnid_of[i] for name, i in zip(names, ground_truth, strict=True)}


class Py2Pickler(pickle._Pickler):
    """Writes str as Python 2 did (byte strings, latin-1), like the CSAIL checkpoints' pickles."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_str(self, obj: str) -> None:
        data = obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_str


PY2_PICKLE = types.SimpleNamespace(
    __name__="py2_pickle",
    Pickler=Py2Pickler,
    dump=lambda obj, f, protocol=2: Py2Pickler(f, protocol).dump(obj),
)


def save_csail(payload: dict, target) -> None:
    """A checkpoint in PyTorch's legacy format with Python 2 strings (as CSAIL published them)."""
    torch.save(
        payload,
        target,
        pickle_module=PY2_PICKLE,
        pickle_protocol=2,
        _use_new_zipfile_serialization=False,
    )


def csail_layout(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Keys as CSAIL saved them: DataParallel on the features (AlexNet) or the whole net, and
    no batch-norm step counters (PyTorch 0.2 had none)."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if arch == "alexnet":
        return {k.replace("features.", "features.module.", 1): v for k, v in state.items()}
    return {f"module.{k}": v for k, v in state.items()}
