"""Rule adapter: results/summary.md, generated from the comparison and cumulative tables."""

import sys
from collections.abc import Sequence
from pathlib import Path

if "snakemake" in globals():  # make the library importable inside any rule environment
    sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821

from unitablation.logs import logged_to  # noqa: E402
from unitablation.store import atomic_path  # noqa: E402
from unitablation.summary import summary_markdown  # noqa: E402
from unitablation.table_io import read_table  # noqa: E402


def main(variants: str, rotation: str, cumulative: Sequence[str], summary_out: str) -> None:
    """Read the tables (cumulative ones keyed by model and layer from their path) and write."""
    tables = {}
    for path in cumulative:
        parts = Path(path).parts  # results/<model>/<layer>/unit/cumulative.csv
        tables[(parts[-4], parts[-3])] = read_table(path)
    text = summary_markdown(read_table(variants), read_table(rotation), tables)
    print(text, file=sys.stderr)
    with atomic_path(summary_out) as temporary:
        temporary.write_text(text)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):  # noqa: F821
        main(
            snakemake.input.variants,  # noqa: F821
            snakemake.input.rotation,  # noqa: F821
            snakemake.input.cumulative,  # noqa: F821
            snakemake.output.summary,  # noqa: F821
        )
