"""Rule adapter: per-class and overall baseline accuracy from a model's eval activation store."""

import sys
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.accuracy import class_accuracy_table, never_predicted  # noqa: E402
from unitablation.logs import logged_to  # noqa: E402
from unitablation.store import ActivationStore, atomic_path  # noqa: E402


def main(store_path: str, table_out: str) -> None:
    """Read labels and logits, write baseline.csv (accuracy in points, 0-100)."""
    with ActivationStore(store_path) as store:
        table = class_accuracy_table(store.labels(), store.logits(), store.classes)
    overall = table.iloc[-1]
    print(f"overall accuracy {overall.accuracy:.2f}% on {overall.n_images} images", file=sys.stderr)
    missing = never_predicted(table)
    if missing:
        print(f"classes never predicted: {', '.join(missing)}", file=sys.stderr)
    with atomic_path(table_out) as temporary:
        table.to_csv(temporary, index=False, float_format="%.4f")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(snakemake.input.store, snakemake.output.table)  # noqa: F821
