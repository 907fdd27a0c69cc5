"""Downloads, checksums, archives, eval-split preparation and checkpoint key maps.

Everything is served by a local HTTP server on 127.0.0.1 (tests/httpserver.py) from files the
tests generate; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from httpserver import (
    broden_zip,
    csail_layout,
    imagenet_stub,
    places_stub,
    save_csail,
    serving,
    tar_bytes,
    zip_bytes,
)
from workflow_runs import ROOT, snakemake

from unitablation.broden import read_broden
from unitablation.checkpoints import (
    conversion_settings,
    convert_checkpoint,
    load_keymaps,
    remap_keys,
)
from unitablation.download import (
    ChecksumError,
    DownloadError,
    DownloadItem,
    UnpinnedError,
    check_fetchable,
    install,
    load_items,
    merge_items,
)
from unitablation.eval_sets import (
    build_eval_set,
    places365_folder_names,
)
from unitablation.images import ImageFolderSet, Preprocess
from unitablation.models import ModelSpec, build_model, load_configured_model, read_checkpoint

KEYMAPS = load_keymaps(ROOT / "resources" / "checkpoint_keymaps.yaml")


# ---------------------------------------------------------------------------------------------
# Generated test data.


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def item(name: str, urls: list[str], kind: str = "file", **entry) -> DownloadItem:
    return DownloadItem.from_entry(name, {"urls": urls, "kind": kind, **entry})


def leftovers(folder: Path) -> list[str]:
    """Files anywhere under `folder`, and hidden entries (temporaries)."""
    if not folder.exists():
        return []
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if not path.is_dir() or path.name.startswith(".")
    )


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(level, message) of the download module's records so far."""
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "unitablation.download"
    ]


def no_sleep(waits: list[float]):
    return waits.append


# ---------------------------------------------------------------------------------------------
# Fetching and verifying.


def test_file_is_fetched_verified_and_installed(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="unitablation.download")
    data = os.urandom(3 * (1 << 20) + 17)  # several streaming blocks
    with serving({"weights.pth": data}) as server:
        spec = item("w", [server.url("weights.pth")], sha256=sha256(data))
        output = tmp_path / "downloads" / "w" / "weights.pth"
        digests = install(spec, output)
    assert output.read_bytes() == data
    assert digests["sha256"] == sha256(data)
    assert ("INFO", f"w: sha256 {sha256(data)} ({server.url('weights.pth')})") in logged(caplog)
    assert leftovers(output.parent) == ["weights.pth"]


def test_sha256_prefix_and_md5_pins_are_verified(tmp_path: Path) -> None:
    data = b"imagenet-like archive"
    md5 = hashlib.md5(data).hexdigest()
    with serving({"a.tar": data}) as server:
        good = item("a", [server.url("a.tar")], sha256_prefix=sha256(data)[:8], md5=md5)
        install(good, tmp_path / "a" / "a.tar")
        assert (tmp_path / "a" / "a.tar").read_bytes() == data
        wrong_md5 = item("b", [server.url("a.tar")], sha256_prefix=sha256(data)[:8], md5="0" * 32)
        with pytest.raises(ChecksumError, match=f"expected md5 {'0' * 32}, got {md5}"):
            install(wrong_md5, tmp_path / "b" / "a.tar", sleep=no_sleep([]))
        wrong_prefix = item("c", [server.url("a.tar")], sha256_prefix="deadbeef")
        with pytest.raises(ChecksumError, match="expected a sha256 starting deadbeef"):
            install(wrong_prefix, tmp_path / "c" / "a.tar", sleep=no_sleep([]))
    assert leftovers(tmp_path / "b") == [] and leftovers(tmp_path / "c") == []


@pytest.mark.parametrize("kind", ["file", "archive"])
def test_checksum_mismatch_names_item_url_and_hashes_and_leaves_nothing(
    tmp_path: Path, kind: str
) -> None:
    data = zip_bytes({"top/x.txt": b"x"})
    expected = "ab" * 32
    with serving({"broden.zip": data}) as server:
        url = server.url("broden.zip")
        spec = item("broden_x", [url], kind=kind, filename="broden.zip", sha256=expected)
        output = tmp_path / "downloads" / ("broden_x/broden.zip" if kind == "file" else "broden_x")
        with pytest.raises(ChecksumError) as error:
            install(spec, output, sleep=no_sleep([]))
        assert server.plan.requests["broden.zip"] == 1  # a wrong file is not fetched again
    message = str(error.value)
    for part in ("broden_x", url, expected, sha256(data), "nothing was installed"):
        assert part in message
    assert not output.exists()
    assert leftovers(tmp_path / "downloads") == []


def test_transient_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    data = b"checkpoint bytes"
    waits: list[float] = []
    with serving({"c.pth": data}, fail_first={"c.pth": 2}) as server:
        spec = item("c", [server.url("c.pth")], sha256=sha256(data))
        install(spec, tmp_path / "c" / "c.pth", retries=4, backoff_s=0.5, sleep=waits.append)
        assert server.plan.requests["c.pth"] == 3
    assert waits == [0.5, 1.0]
    assert (tmp_path / "c" / "c.pth").read_bytes() == data


def test_truncated_responses_are_retried(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="unitablation.download")
    data = os.urandom(5000)
    with serving({"t.bin": data}, truncate_first={"t.bin": 1}) as server:
        spec = item("t", [server.url("t.bin")], sha256=sha256(data))
        install(spec, tmp_path / "t" / "t.bin", sleep=no_sleep([]))
        assert server.plan.requests["t.bin"] == 2
    failures = [line for level, line in logged(caplog) if level == "WARNING"]
    assert len(failures) == 1, failures  # the failed attempt is a warning; the retry is not
    assert "IncompleteRead" in failures[0] or "received" in failures[0]
    assert (tmp_path / "t" / "t.bin").read_bytes() == data


def test_gives_up_after_the_retries_naming_each_url(tmp_path: Path) -> None:
    waits: list[float] = []
    with serving({"d.pth": b"d"}, fail_first={"d.pth": 100}) as server:
        spec = item("d", [server.url("d.pth")], sha256=sha256(b"d"))
        with pytest.raises(DownloadError, match=r"after 3 attempt\(s\).*503") as error:
            install(
                spec,
                tmp_path / "d" / "d.pth",
                retries=2,
                backoff_s=1,
                sleep=waits.append,
            )
        assert server.plan.requests["d.pth"] == 3
    assert not isinstance(error.value, ChecksumError)
    assert waits == [1, 2]
    assert leftovers(tmp_path) == []


def test_hard_errors_are_not_retried_and_the_next_mirror_serves(tmp_path: Path) -> None:
    data = b"mirror copy"
    with serving({"mirror/m.pth": data}) as server:
        spec = item(
            "m", [server.url("gone/m.pth"), server.url("mirror/m.pth")], sha256=sha256(data)
        )
        install(spec, tmp_path / "m" / "m.pth", sleep=no_sleep([]))
        assert server.plan.requests["gone/m.pth"] == 1  # 404: not retried
        assert server.plan.requests["mirror/m.pth"] == 1
    assert (tmp_path / "m" / "m.pth").read_bytes() == data


def test_unpinned_items_are_refused_unless_allowed(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="unitablation.download")
    data = b"places checkpoint"
    with serving({"p.tar": data}) as server:
        spec = item("places_x", [server.url("p.tar")], sha256=None)
        with pytest.raises(UnpinnedError, match="places_x.*allow_unpinned_downloads") as refused:
            install(spec, tmp_path / "p" / "p.tar")
        assert sum(server.plan.requests.values()) == 0  # refused before any request
        with pytest.raises(UnpinnedError, match="pins no checksum"):
            check_fetchable(spec, allow_unpinned=False)
        check_fetchable(spec, allow_unpinned=True)
        install(spec, tmp_path / "p" / "p.tar", allow_unpinned=True)
    assert (tmp_path / "p" / "p.tar").read_bytes() == data
    warned = [line for level, line in logged(caplog) if level == "WARNING"]
    assert len(warned) == 1 and "UNPINNED" in warned[0] and f"sha256: {sha256(data)}" in warned[0]
    for message in (str(refused.value), warned[0]):  # the library names no command line
        assert "--config" not in message and "snakemake" not in message.lower()
    assert DownloadItem.from_settings(spec.settings(allow_unpinned=True)) == (spec, True)
    pinned = item("q", ["http://127.0.0.1:9/q"], sha256=sha256(data))
    assert "allow_unpinned" not in pinned.settings(allow_unpinned=True)
    assert DownloadItem.from_settings(pinned.settings(allow_unpinned=True)) == (pinned, False)


def test_items_without_urls_say_what_to_set(tmp_path: Path) -> None:
    spec = DownloadItem.from_entry(
        "imagenet_val",
        {"urls": None, "filename": "ILSVRC2012_img_val.tar", "md5": "0" * 32, "note": "Get it."},
    )
    with pytest.raises(DownloadError, match=r"downloads\.imagenet_val\.urls.*Get it\."):
        install(spec, tmp_path / "x")
    with pytest.raises(DownloadError, match=r"downloads\.imagenet_val\.urls"):
        check_fetchable(spec, allow_unpinned=True)


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_archives_extract_their_subdir_into_place(tmp_path: Path, packing: str) -> None:
    zipped = broden_zip(tmp_path, "broden1_224")
    if packing == "tar.gz":
        with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
        data = tar_bytes(files, mode="w:gz")
    else:
        data = zipped
    name = f"broden.{packing}"
    with serving({name: data}) as server:
        spec = item(
            "broden1_224",
            [server.url(name)],
            kind="archive",
            filename=name,
            subdir="broden1_224",
            sha256=sha256(data),
        )
        output = tmp_path / "downloads" / "broden1_224"
        install(spec, output)
    broden = read_broden(output)
    assert len(broden) == 3 and broden.load_labels(0)["color"].shape == (1, 8, 8)
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["broden1_224"]


def test_archive_without_the_subdir_lists_its_top_level(tmp_path: Path) -> None:
    data = zip_bytes({"other/index.csv": b"x"})
    with serving({"b.zip": data}) as server:
        spec = item(
            "b", [server.url("b.zip")], kind="archive", subdir="broden1_227", sha256=sha256(data)
        )
        with pytest.raises(DownloadError, match=r"no folder 'broden1_227'.*\['other'\]"):
            install(spec, tmp_path / "dl" / "b")
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("packing", ["zip", "tar"])
def test_archive_members_escaping_the_folder_are_refused(tmp_path: Path, packing: str) -> None:
    files = {"ok/a.txt": b"a", "../evil.txt": b"evil"}
    data = zip_bytes(files) if packing == "zip" else tar_bytes(files)
    with serving({"e": data}) as server:
        spec = item("e", [server.url("e")], kind="archive", filename="e.bin", sha256=sha256(data))
        with pytest.raises(ValueError, match="outside the extraction folder"):
            install(spec, tmp_path / "dl" / "e")
    assert not (tmp_path / "evil.txt").exists() and leftovers(tmp_path / "dl") == []


def test_local_sources_are_verified_and_linked_not_copied(tmp_path: Path) -> None:
    data = b"a big local tar"
    source = tmp_path / "data" / "ILSVRC2012_img_val.tar"
    source.parent.mkdir()
    source.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    spec = item("imagenet_val", [str(source)], md5=md5)
    output = tmp_path / "dl" / "imagenet_val" / "ILSVRC2012_img_val.tar"
    install(spec, output)
    assert output.is_symlink() and output.resolve() == source.resolve()
    wrong = item("imagenet_val2", [source.as_uri()], md5="1" * 32)
    with pytest.raises(ChecksumError, match=f"local file {source}.*got {md5}"):
        install(wrong, tmp_path / "dl" / "imagenet_val2" / "x.tar")
    assert leftovers(tmp_path / "dl" / "imagenet_val2") == []


def test_leftovers_of_an_interrupted_attempt_are_removed(tmp_path: Path) -> None:
    data = b"fresh"
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / ".w.w.pth.part-12345").write_bytes(b"half a download")
    with serving({"w.pth": data}) as server:
        install(item("w", [server.url("w.pth")], sha256=sha256(data)), folder / "w.pth")
    assert leftovers(folder) == ["w.pth"]


# ---------------------------------------------------------------------------------------------
# The item table.


def test_shipped_table_is_valid_and_pins_what_is_known() -> None:
    items = load_items(ROOT / "resources" / "downloads.yaml", {})
    for name in ("alexnet", "vgg16", "resnet18", "resnet50"):
        spec = items[f"torchvision_{name}"]
        # torchvision's file names carry the leading hex digits of the sha256: that is the pin
        assert spec.filename.rsplit("-", 1)[1].split(".")[0] == spec.sha256_prefix
        assert spec.sha256 is None and spec.urls[0].startswith("https://download.pytorch.org/")
    assert items["imagenet_val"].md5 == "29b22e2961454d5413ddabcf34fc5622"
    assert items["imagenet_val"].urls == () and items["imagenet_devkit"].urls == ()
    for name in ("places365_alexnet", "places365_resnet18", "broden1_224", "places365_val_256"):
        assert not items[name].pinned  # unknown here: the user pins after the first download
    for spec in items.values():
        if spec.convert:
            assert conversion_settings(spec, KEYMAPS)["rules"]
    assert items["broden1_227"].kind == "archive" and items["broden1_227"].subdir == "broden1_227"


def test_config_overrides_replace_keys_and_add_items() -> None:
    table = {"a": {"urls": ["http://x/a.pth"], "sha256_prefix": "abcdef12"}}
    items = merge_items(
        table,
        {
            "a": {"urls": ["/local/a.pth"], "sha256": "0" * 64},
            "new": {"urls": ["http://y/n.zip"], "kind": "archive"},
        },
    )
    assert items["a"].urls == ("/local/a.pth",) and items["a"].filename == "a.pth"
    assert items["a"].sha256 == "0" * 64 and items["a"].sha256_prefix == "abcdef12"
    assert items["new"].kind == "archive" and items["new"].path("dl") == "dl/new"
    with pytest.raises(ValueError, match="'a'.*unknown key"):
        merge_items(table, {"a": {"sha1": "x"}})
    with pytest.raises(ValueError, match="sha256 must be"):
        merge_items(table, {"a": {"sha256": "xyz"}})
    with pytest.raises(ValueError, match="subdir"):
        merge_items(table, {"a": {"subdir": "../up", "kind": "archive"}})


# ---------------------------------------------------------------------------------------------
# Checkpoint key maps.


@pytest.mark.parametrize("arch", ["alexnet", "resnet18"])
def test_csail_places365_checkpoints_load_into_torchvision_exactly(
    tmp_path: Path, arch: str
) -> None:
    torch.manual_seed(0)
    original = build_model(ModelSpec(arch=arch, num_classes=365)).eval()
    state = original.state_dict()
    payload = {
        "epoch": 90,
        "arch": arch,
        "state_dict": csail_layout(state, arch),
        "best_prec1": 53.2,
        "note": "caf\xe9",  # a non-ASCII Python 2 byte string: utf-8 decoding fails on it
    }
    source = tmp_path / f"{arch}_places365.pth.tar"
    save_csail(payload, source)
    with pytest.raises(ValueError, match="cannot read checkpoint"):  # not loadable as it is
        load_configured_model({"arch": arch, "num_classes": 365}, source, torch.device("cpu"))
    output = tmp_path / "converted.pt"
    keys = convert_checkpoint(source, output, arch, 365, KEYMAPS["csail_places365"])
    assert keys == list(state)  # complete, in torchvision's order
    converted = read_checkpoint(output).state_dict
    assert all(torch.equal(converted[k], state[k]) for k in state if "num_batches" not in k)
    model, _, classes = load_configured_model(
        {"arch": arch, "num_classes": 365}, output, torch.device("cpu")
    )
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(images), original(images))
    assert len(classes) == 365


def test_csail_densenet_key_map_gives_torchvision_names() -> None:
    with torch.device("meta"):
        reference = torchvision.models.densenet121(num_classes=5).state_dict()
    old = {}
    for key, value in reference.items():
        if key.endswith("num_batches_tracked"):
            continue  # PyTorch 0.2 had no batch-norm step counters
        for name in ("norm", "relu", "conv"):
            for index in ("1", "2"):
                if f".{name}{index}." in key and ".denselayer" in key:
                    key = key.replace(f".{name}{index}.", f".{name}.{index}.")
        old[f"module.{key}"] = value
    assert any(".norm.1." in key for key in old)
    mapped = remap_keys(old, KEYMAPS["csail_places365_densenet"])
    assert list(mapped) == [k for k in reference if not k.endswith("num_batches_tracked")]


def test_a_checkpoint_that_does_not_fit_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = build_model(ModelSpec(arch="resnet18", num_classes=3)).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    source = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, source)
    with pytest.raises(ValueError, match=r"missing \['fc.bias'\], unexpected \['extra.weight'\]"):
        convert_checkpoint(source, tmp_path / "out.pt", "resnet18", 3, KEYMAPS["csail_places365"])
    assert not (tmp_path / "out.pt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.pth"]


# ---------------------------------------------------------------------------------------------
# Eval splits.


def test_places365_folder_names_keep_the_class_index_order() -> None:
    categories = "/f/field/cultivated 0\n/f/field/wild 1\n/f/field_road 2\n/k/kitchen 3\n"
    assert places365_folder_names(categories) == [
        "field-cultivated",
        "field-wild",
        "field_road",
        "kitchen",
    ]  # with "_" instead of "-" field_road would sort before field_wild
    with pytest.raises(ValueError, match="sort"):
        places365_folder_names("/a/a.b 0\n/a/a/c 1\n")


def test_places365_val_becomes_class_folders(tmp_path: Path) -> None:
    classes = ["airfield", "field/cultivated", "field/wild", "field_road"]
    val_tar, filelist, truth = places_stub(classes)
    (tmp_path / "val_256.tar").write_bytes(val_tar)
    (tmp_path / "filelist.tar").write_bytes(filelist)
    output = tmp_path / "prepared" / "places365_val"
    counts = build_eval_set(
        "places365", tmp_path / "val_256.tar", tmp_path / "filelist.tar", output
    )
    assert counts == {"airfield": 2, "field-cultivated": 2, "field-wild": 2, "field_road": 2}
    dataset = ImageFolderSet(output, Preprocess())
    assert dataset.classes == list(counts)  # sorted folders = class index order
    with tarfile.open(tmp_path / "val_256.tar") as archive:
        for path, label in dataset.samples:
            assert dataset.classes[label] == truth[path.name]
            assert path.read_bytes() == archive.extractfile(f"val_256/{path.name}").read()
    assert leftovers(tmp_path / "prepared") == sorted(
        str(p.relative_to(tmp_path / "prepared")) for p in output.rglob("*.jpg")
    )


def test_imagenet_val_becomes_wnid_folders(tmp_path: Path) -> None:
    images, devkit, truth = imagenet_stub(tmp_path)
    (tmp_path / "val.tar").write_bytes(images)
    (tmp_path / "devkit.tar.gz").write_bytes(devkit)
    output = tmp_path / "imagenet_val"
    counts = build_eval_set("imagenet", tmp_path / "val.tar", tmp_path / "devkit.tar.gz", output)
    assert list(counts) == ["n01000000", "n02000000", "n03000000"]  # torchvision's order
    dataset = ImageFolderSet(output, Preprocess())
    assert [truth[path.name] for path, _ in dataset.samples] == [
        dataset.classes[label] for _, label in dataset.samples
    ]
    assert sorted(path.name for path, _ in dataset.samples) == sorted(truth)


def test_a_missing_labelled_image_fails_and_leaves_nothing(tmp_path: Path) -> None:
    val_tar, filelist, _ = places_stub(["a", "b"])
    with tarfile.open(fileobj=io.BytesIO(val_tar)) as archive:
        kept = {m.name: archive.extractfile(m).read() for m in archive.getmembers()[:-1]}
    (tmp_path / "val.tar").write_bytes(tar_bytes(kept))
    (tmp_path / "filelist.tar").write_bytes(filelist)
    with pytest.raises(ValueError, match="lacks 1 labelled image"):
        build_eval_set(
            "places365", tmp_path / "val.tar", tmp_path / "filelist.tar", tmp_path / "out" / "v"
        )
    assert leftovers(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------
# Through Snakemake: download -> prepare -> convert -> extraction, and a checksum failure.


def run_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    """Snakemake in `workdir` with `config` written to test_config.yaml there."""
    path = workdir / "test_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return snakemake(workdir, *args, config=path, timeout=600)


@pytest.fixture(scope="module")
def stub_files(tmp_path_factory) -> dict[str, bytes]:
    tmp_path = tmp_path_factory.mktemp("stubs")
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18", num_classes=3))
    buffer = io.BytesIO()
    save_csail(
        {
            "epoch": 1,
            "arch": "resnet18",
            "state_dict": csail_layout(model.state_dict(), "resnet18"),
        },
        buffer,
    )
    val_tar, filelist, _ = places_stub(["beach", "kitchen", "street"])
    return {
        "resnet18_places365.pth.tar": buffer.getvalue(),
        "val_256.tar": val_tar,
        "filelist_places365-standard.tar": filelist,
        "broden1_224.zip": broden_zip(tmp_path, "broden1_224", size=32),
    }


@pytest.mark.workflow
def test_snakemake_downloads_prepares_and_extracts(tmp_path: Path, stub_files) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")  # merged first, as for users
    items = {
        "places365_resnet18": "resnet18_places365.pth.tar",
        "places365_val_256": "val_256.tar",
        "places365_filelist": "filelist_places365-standard.tar",
        "broden1_224": "broden1_224.zip",
    }
    with serving(stub_files, fail_first={"val_256.tar": 1}) as server:
        downloads = {
            name: {"urls": [server.url(file)], "sha256": sha256(stub_files[file])}
            for name, file in items.items()
        }
        downloads["places365_resnet18"]["convert"] = {
            "arch": "resnet18",
            "num_classes": 3,
            "keymap": "csail_places365",
        }
        config = {
            "device": "cpu",
            "only_models": ["stub_places"],
            "downloads": downloads,
            "models": {
                "stub_places": {
                    "arch": "resnet18",
                    "num_classes": 3,
                    "weights": "resources/prepared/weights/places365_resnet18.pt",
                    "eval_images": "resources/prepared/places365_val",
                    "concept_set": "resources/downloads/broden1_224",
                    "layers": ["layer4"],
                    "preprocess": {"resize": 32, "crop": 32},
                }
            },
        }
        targets = ["results/stub_places/baseline.csv", "resources/downloads/broden1_224"]
        result = run_snakemake(tmp_path, config, "--cores", "2", *targets)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert server.plan.requests["val_256.tar"] == 2  # the 503 was retried
        assert all(server.plan.requests[file] >= 1 for file in items.values())
    for rule in (
        "download_file",
        "download_archive",
        "prepare_places365_val",
        "convert_checkpoint",
    ):
        assert f"rule {rule}:" in result.stderr, rule
    assert "rule generate_world:" not in result.stderr and "rule train_model:" not in result.stderr
    log = (tmp_path / "results/logs/download_file/places365_val_256/val_256.tar.log").read_text()
    assert sha256(stub_files["val_256.tar"]) in log and "503" in log
    prepared = tmp_path / "resources/prepared/places365_val"
    assert sorted(p.name for p in prepared.iterdir() if p.is_dir()) == [
        "beach",
        "kitchen",
        "street",
    ]
    assert len(read_broden(tmp_path / "resources/downloads/broden1_224")) == 3
    baseline = (tmp_path / "results/stub_places/baseline.csv").read_text()
    assert "beach" in baseline and "street" in baseline
    again = run_snakemake(tmp_path, config, "-n", *targets)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.workflow
def test_snakemake_checksum_mismatch_fails_naming_the_item(tmp_path: Path, stub_files) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    wrong = "0" * 64
    with serving(stub_files) as server:
        url = server.url("filelist_places365-standard.tar")
        config = {"downloads": {"places365_filelist": {"urls": [url], "sha256": wrong}}}
        target = "resources/downloads/places365_filelist/filelist_places365-standard.tar"
        result = run_snakemake(tmp_path, config, "--cores", "1", target)
    assert result.returncode != 0
    log = (
        tmp_path
        / "results/logs/download_file/places365_filelist/filelist_places365-standard.tar.log"
    ).read_text()
    actual = sha256(stub_files["filelist_places365-standard.tar"])
    assert "ChecksumError" in log
    for part in ("places365_filelist", url, f"expected sha256 {wrong}", f"got {actual}"):
        assert part in log, part
    assert leftovers(tmp_path / "resources") == []


@pytest.mark.workflow
def test_snakemake_prepares_imagenet_from_local_files(tmp_path: Path) -> None:
    images, devkit, truth = imagenet_stub(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ILSVRC2012_img_val.tar").write_bytes(images)
    (data / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    config = {
        "downloads": {
            "imagenet_val": {
                "urls": [str(data / "ILSVRC2012_img_val.tar")],
                "md5": None,
                "sha256": sha256(images),
            },
            "imagenet_devkit": {
                "urls": [(data / "ILSVRC2012_devkit_t12.tar.gz").as_uri()],
                "md5": hashlib.md5(devkit).hexdigest(),
            },
        }
    }
    result = run_snakemake(workdir, config, "--cores", "1", "resources/prepared/imagenet_val")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    linked = workdir / "resources/downloads/imagenet_val/ILSVRC2012_img_val.tar"
    assert linked.is_symlink() and linked.resolve() == (data / "ILSVRC2012_img_val.tar").resolve()
    dataset = ImageFolderSet(workdir / "resources/prepared/imagenet_val", Preprocess())
    assert dataset.classes == sorted(set(truth.values()))
    assert {p.name: dataset.classes[k] for p, k in dataset.samples} == truth
    again = run_snakemake(workdir, config, "-n", "resources/prepared/imagenet_val")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.workflow
def test_pinning_after_an_unpinned_first_download(tmp_path: Path, stub_files) -> None:
    """The documented flow: allow once, read the sha256 in the log, pin, clean the metadata."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    file = "filelist_places365-standard.tar"
    target = f"resources/downloads/places365_filelist/{file}"
    with serving(stub_files) as server:
        unpinned = {"downloads": {"places365_filelist": {"urls": [server.url(file)]}}}
        allowed = {**unpinned, "allow_unpinned_downloads": True}
        first = run_snakemake(tmp_path, allowed, "--cores", "1", target)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        log = (tmp_path / f"results/logs/download_file/places365_filelist/{file}.log").read_text()
        digest = sha256(stub_files[file])
        assert f"add `sha256: {digest}`" in log and f"--cleanup-metadata {target}" in log
        pinned = {
            "downloads": {"places365_filelist": {"urls": [server.url(file)], "sha256": digest}}
        }
        stale = run_snakemake(tmp_path, pinned, "-n", target)
        assert "download_file" in stale.stdout + stale.stderr  # params changed: would refetch
        cleaned = run_snakemake(tmp_path, pinned, "--cleanup-metadata", target)
        assert cleaned.returncode == 0, cleaned.stdout[-2000:] + cleaned.stderr[-2000:]
        after = run_snakemake(tmp_path, pinned, "-n", target)
        assert "Nothing to be done" in after.stdout + after.stderr
        assert server.plan.requests[file] == 1
