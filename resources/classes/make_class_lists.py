"""Write the class lists shipped in resources/classes/ (imagenet.txt, places365.txt).

    .venv/bin/python resources/classes/make_class_lists.py \
        --imagenet-synsets ILSVRC2012_devkit_t12.tar.gz --places365-categories FILE

- imagenet.txt: `<WordNet ID>\t<name>` for the 1000 ILSVRC2012 classes in torchvision's output
  order (sorted WordNet IDs, the folders of the prepared ImageNet val split). Names are
  torchvision's, offline from its weights metadata (`ResNet50_Weights.IMAGENET1K_V1.meta`), where
  the two names WordNet repeats are told apart ("crane bird", "maillot tank suit"). The IDs come
  from `--imagenet-synsets`: the ILSVRC2012 devkit tar, or any text file whose lines start with
  the WordNet ID (only those lines are read), such as CSAIL's categories_hybrid1365.txt.
- places365.txt: one name per line for the 365 Places365-Standard classes in output order, from
  `--places365-categories` (categories_places365.txt, or filelist_places365-standard.tar that
  holds it): "/b/bakery/shop" becomes "bakery-shop", the folder name of the prepared Places365
  val split and Broden's scene label without its "-s".

Only the lists whose source is given are (re)written.
"""

from __future__ import annotations

import argparse
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "workflow"))

from unitablation.class_lists import format_class_list  # noqa: E402
from unitablation.eval_sets import places365_folder_names, read_imagenet_devkit  # noqa: E402

WNID = re.compile(r"n\d{8}")


def imagenet_wnids(source: Path) -> list[str]:
    """The 1000 class WordNet IDs in output order, from the devkit tar or a text listing."""
    if tarfile.is_tarfile(source):
        wnids, _ = read_imagenet_devkit(source)
    else:
        firsts = [line.split()[:1] for line in source.read_text(encoding="utf-8").splitlines()]
        wnids = [first[0] for first in firsts if first and WNID.fullmatch(first[0])]
    if len(wnids) != 1000 or len(set(wnids)) != 1000 or wnids != sorted(wnids):
        raise ValueError(f"{source}: expected 1000 distinct WordNet IDs in sorted order")
    return wnids


def imagenet_text(source: Path) -> str:
    """imagenet.txt: WordNet IDs from `source`, names from torchvision's weights metadata."""
    import torchvision
    from torchvision.models import ResNet50_Weights

    names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    header = (
        "ImageNet (ILSVRC2012) classes in torchvision's output order: WordNet ID (the eval\n"
        f"folder) <TAB> name. Names: torchvision {torchvision.__version__} weights metadata;\n"
        f"IDs: {source.name}. Written by resources/classes/make_class_lists.py."
    )
    return format_class_list(names, imagenet_wnids(source), header)


def places365_text(source: Path) -> str:
    """places365.txt: the Places365-Standard categories as eval folder names."""
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            member = next(m for m in archive if m.name.endswith("categories_places365.txt"))
            text = archive.extractfile(member).read().decode()
    else:
        text = source.read_text(encoding="utf-8")
    names = places365_folder_names(text)
    if len(names) != 365:
        raise ValueError(f"{source}: expected 365 categories, found {len(names)}")
    header = (
        "Places365-Standard classes in output order, as eval folder names: the category path\n"
        'without its "/<letter>/", "/" written "-" (Broden\'s scene label less its "-s").\n'
        f"Source: {source.name}. Written by resources/classes/make_class_lists.py."
    )
    return format_class_list(names, None, header)


def main(argv: list[str] | None = None) -> None:
    """Write each list whose source file is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet-synsets", type=Path)
    parser.add_argument("--places365-categories", type=Path)
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.imagenet_synsets is None and args.places365_categories is None:
        parser.error("give --imagenet-synsets and/or --places365-categories")
    if args.imagenet_synsets is not None:
        (args.output / "imagenet.txt").write_text(imagenet_text(args.imagenet_synsets))
    if args.places365_categories is not None:
        (args.output / "places365.txt").write_text(places365_text(args.places365_categories))


if __name__ == "__main__":
    main()
