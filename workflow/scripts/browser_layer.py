"""Rule adapter: the unit browser's data script of one (model, layer, basis)."""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unitablation.browser.cards import LayerSources, build_layer
from unitablation.browser.page import write_layer_script
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.browser_layer")


def main(
    sources: LayerSources,
    script_out: str,
    model: str,
    layer: str,
    basis: str,
    browser: Mapping[str, Any],
) -> None:
    """Build the layer's rows, cards and class view; write its script and image list."""
    data, refs = build_layer(
        sources, model, layer, basis, browser["images_per_unit"], browser["class_units"]
    )
    write_layer_script(data, refs, Path(script_out))
    LOG.info(
        f"{model} {layer} {basis}: {len(data['rows'])} units, {len(data['classes'])} classes, "
        f"{len(refs)} images referenced; concept images: {data['has_concepts']}, "
        f"cumulative curves: {data['has_cumulative']}"
    )


def optional_path(value: str | None) -> Path | None:
    """A named input's path, None where the rule gave none."""
    return None if value is None else Path(value)


if "snakemake" in globals():
    with logged_to(snakemake.log[0]):
        main(
            LayerSources(
                units=Path(snakemake.input.units),
                class_drops=Path(snakemake.input.class_drops),
                eval_store=Path(snakemake.input.eval_store),
                eval_images=Path(snakemake.input.eval_images),
                concepts=optional_path(snakemake.input.get("concepts")),
                concept_store=optional_path(snakemake.input.get("concept_store")),
                broden=optional_path(snakemake.input.get("broden")),
                cumulative=optional_path(snakemake.input.get("cumulative")),
            ),
            snakemake.output.script,
            snakemake.wildcards.model,
            snakemake.wildcards.layer,
            snakemake.wildcards.basis,
            snakemake.params.browser,
        )
