"""Rule adapter: per-class and overall baseline accuracy from a model's eval activation store."""

import logging

from unitablation.accuracy import class_accuracy_table, never_predicted
from unitablation.logs import logged_to
from unitablation.store import ActivationStore, atomic_path

LOG = logging.getLogger("unitablation.scripts.baseline_accuracy")


def main(store_path: str, table_out: str) -> None:
    """Read labels and logits, write baseline.csv (accuracy in points, 0-100)."""
    with ActivationStore(store_path) as store:
        table = class_accuracy_table(store.labels(), store.logits(), store.classes)
    overall = table.iloc[-1]
    LOG.info(f"overall accuracy {overall.accuracy:.2f}% on {overall.n_images} images")
    missing = never_predicted(table)
    if missing:
        LOG.warning(f"classes never predicted: {', '.join(missing)}")
    with atomic_path(table_out) as temporary:
        table.to_csv(temporary, index=False, float_format="%.4f")


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(snakemake.input.store, snakemake.output.table)
