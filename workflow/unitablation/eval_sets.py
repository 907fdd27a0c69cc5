"""Labelled eval splits from the published archives, laid out as ImageFolder class folders.

The pipeline reads an eval split as `<root>/<class>/<image>`, classes in sorted folder order =
the network's output order. These builders stream the release tar once and write each image
into its class folder (no second copy, no symbolic links), into a hidden temporary folder that
is renamed into place when complete.

- Places365 (Places365-Standard val): `val_256.tar` holds `val_256/Places365_val_<n>.jpg`;
  `filelist_places365-standard.tar` holds `places365_val.txt` ("<file> <class index>") and
  `categories_places365.txt` ("/a/airfield 0"). A category path becomes a folder name by
  dropping the leading "/<letter>/" and writing "/" as "-" ("/f/field/wild" -> "field-wild"),
  which keeps the sorted folder order equal to the class index (checked).
- ImageNet (ILSVRC2012 val): `ILSVRC2012_img_val.tar` holds `ILSVRC2012_val_<n>.JPEG`; the
  devkit `ILSVRC2012_devkit_t12.tar.gz` holds `data/meta.mat` (synsets: ILSVRC2012_ID, WNID,
  ...) and `data/ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per image, in file
  number order). Folders are WNIDs, whose sorted order is torchvision's class order.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
Progress = Callable[[int | None, str], Any]


def _members_by_name(archive: tarfile.TarFile, names: Sequence[str]) -> dict[str, bytes]:
    """Contents of the regular members whose base name is one of `names` (any folder)."""
    found: dict[str, bytes] = {}
    for member in archive:
        base = PurePosixPath(member.name).name
        if member.isfile() and base in names and base not in found:
            handle = archive.extractfile(member)
            assert handle is not None
            found[base] = handle.read()
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"archive {archive.name} has no member(s) named {missing}")
    return found


def places365_folder_names(categories: str) -> list[str]:
    """Class folder names in class-index order from categories_places365.txt text.

    ValueError when indices are not 0..K-1, names collide, or sorting the folder names would
    not give the class-index order.
    """
    pairs = []
    for line_number, line in enumerate(categories.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(/\S+)\s+(\d+)\s*", line)
        if not match:
            raise ValueError(f"categories line {line_number}: cannot parse {line!r}")
        path, index = match.group(1), int(match.group(2))
        name = re.sub(r"^/[^/]/", "", path).strip("/").replace("/", "-")
        pairs.append((index, name))
    pairs.sort()
    indices = [index for index, _ in pairs]
    if indices != list(range(len(pairs))):
        raise ValueError("category indices are not 0..K-1, each once")
    names = [name for _, name in pairs]
    if len(set(names)) != len(names) or sorted(names) != names:
        raise ValueError("category folder names collide or do not sort in class-index order")
    return names


def read_places365_filelist(filelist_tar: str | Path) -> tuple[list[str], dict[str, str]]:
    """Folder names (class order) and {image file name: folder name} for Places365 val."""
    with tarfile.open(filelist_tar) as archive:
        texts = _members_by_name(archive, ["categories_places365.txt", "places365_val.txt"])
    folders = places365_folder_names(texts["categories_places365.txt"].decode())
    labels = {}
    for line_number, line in enumerate(texts["places365_val.txt"].decode().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(folders):
            raise ValueError(f"places365_val.txt line {line_number}: bad entry {line!r}")
        labels[PurePosixPath(parts[0]).name] = folders[int(parts[1])]
    return folders, labels


def read_imagenet_devkit(devkit_tar: str | Path) -> tuple[list[str], dict[str, str]]:
    """WNIDs (sorted = class order) and {val image file name: WNID} from the ILSVRC2012 devkit."""
    from scipy.io import loadmat

    names = ["meta.mat", "ILSVRC2012_validation_ground_truth.txt"]
    with tarfile.open(devkit_tar) as archive:
        files = _members_by_name(archive, names)
    synsets = loadmat(io.BytesIO(files["meta.mat"]), squeeze_me=True)["synsets"]
    wnid_of_id = {}
    for ilsvrc_id, wnid, children in zip(
        synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"], strict=True
    ):
        if int(children) == 0:  # leaves are the 1000 classes
            wnid_of_id[int(ilsvrc_id)] = str(wnid)
    labels = {}
    truth = files["ILSVRC2012_validation_ground_truth.txt"].decode().split()
    for number, value in enumerate(truth, 1):
        if int(value) not in wnid_of_id:
            raise ValueError(f"ground truth line {number}: {value} is not a leaf ILSVRC2012_ID")
        labels[f"ILSVRC2012_val_{number:08d}.JPEG"] = wnid_of_id[int(value)]
    return sorted(wnid_of_id.values()), labels


def build_image_folder(
    images_tar: str | Path,
    labels: Mapping[str, str],
    classes: Sequence[str],
    output: str | Path,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Write every labelled image of `images_tar` into `output/<class>/<file>`, atomically.

    Images are matched by base name. ValueError when a labelled image is missing from the tar,
    an image of the tar has no label, or a class ends up without images. Returns image counts
    per class.
    """
    final = Path(output)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    counts = dict.fromkeys(classes, 0)
    seen: set[str] = set()
    try:
        for name in classes:
            (staging / name).mkdir(parents=True)
        with tarfile.open(images_tar, mode="r|*") as archive:
            bar = progress(len(labels), f"images of {Path(images_tar).name}") if progress else None
            for member in archive:
                base = PurePosixPath(member.name).name
                if not member.isfile() or not base.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if base not in labels:
                    raise ValueError(f"{images_tar}: image {member.name} has no label")
                if base in seen:
                    raise ValueError(f"{images_tar}: image {base} appears twice")
                handle = archive.extractfile(member)
                assert handle is not None
                with open(staging / labels[base] / base, "wb") as out:
                    shutil.copyfileobj(handle, out)
                seen.add(base)
                counts[labels[base]] += 1
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        missing = sorted(set(labels) - seen)
        if missing:
            raise ValueError(
                f"{images_tar} lacks {len(missing)} labelled image(s), e.g. {missing[:3]}"
            )
        empty = [name for name, count in counts.items() if count == 0]
        if empty:
            raise ValueError(f"class folder(s) without images: {empty[:5]} ({len(empty)})")
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()  # an empty folder left by the scheduler
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


#: Per published eval split: the reader of its label archive -> (class folders, image -> folder).
LABEL_READERS: dict[str, Callable[[str | Path], tuple[list[str], dict[str, str]]]] = {
    "places365": read_places365_filelist,
    "imagenet": read_imagenet_devkit,
}


def build_eval_set(
    dataset: str,
    val_tar: str | Path,
    labels_tar: str | Path,
    output: str | Path,
    progress: Progress | None = None,
) -> dict[str, int]:
    """A published val split (`places365`: val_256.tar + file list; `imagenet`: the val tar +
    devkit) as class folders (see the module docstring)."""
    if dataset not in LABEL_READERS:
        raise ValueError(f"unknown eval set {dataset!r}; known: {', '.join(LABEL_READERS)}")
    folders, labels = LABEL_READERS[dataset](labels_tar)
    return build_image_folder(val_tar, labels, folders, output, progress)
