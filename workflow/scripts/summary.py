"""Rule adapter: results/summary.md, generated from the comparison and cumulative tables."""

import logging
from collections.abc import Sequence
from pathlib import Path

from unitablation.logs import logged_to
from unitablation.store import atomic_path
from unitablation.summary import summary_markdown
from unitablation.table_io import read_table

LOG = logging.getLogger("unitablation.scripts.summary")


def main(variants: str, rotation: str, cumulative: Sequence[str], summary_out: str) -> None:
    """Read the tables (cumulative ones keyed by model and layer from their path) and write."""
    tables = {}
    for path in cumulative:
        parts = Path(path).parts  # results/<model>/<layer>/unit/cumulative.csv
        tables[(parts[-4], parts[-3])] = read_table(path)
    text = summary_markdown(read_table(variants), read_table(rotation), tables)
    LOG.info(f"summary:\n{text}")
    with atomic_path(summary_out) as temporary:
        temporary.write_text(text)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            snakemake.input.variants,
            snakemake.input.rotation,
            snakemake.input.cumulative,
            snakemake.output.summary,
        )
