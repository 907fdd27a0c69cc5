"""Rule adapter of every figure: draw a scope's registered figures, each to its PNG and PDF."""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from unitablation.figures.registry import (
    DPI_KEY,
    FigureJob,
    figure,
    figure_inputs,
    figure_settings,
    output_key,
    render,
)
from unitablation.figures.style import save_figure
from unitablation.logs import logged_to

LOG = logging.getLogger("unitablation.scripts.figure")


def main(
    name: str,
    inputs: Mapping[str, Any],
    settings: Mapping[str, Any],
    wildcards: Mapping[str, str],
    png: str,
) -> Figure:
    """Draw figure `name` from its inputs and settings; write `png` and the PDF beside it."""
    spec = figure(name)
    LOG.info("figure %s (%s scope), settings %s", name, spec.scope, dict(settings))
    drawn = render(FigureJob(spec, dict(inputs), dict(settings), dict(wildcards)))
    save_figure(drawn, Path(png).with_suffix(""), settings[DPI_KEY])
    return drawn


def job_inputs(named: Any) -> dict[str, Any]:
    """Snakemake's named inputs as a plain dict: a path, or a list of paths."""
    return {name: value if isinstance(value, str) else list(value) for name, value in named.items()}


def draw_group(
    names: list[str],
    inputs: Mapping[str, Any],
    settings: Mapping[str, Any],
    wildcards: Mapping[str, str],
    outputs: Mapping[str, str],
    logs: Mapping[str, str],
) -> None:
    """Draw each figure of a group job in turn, from its own inputs and settings, logging to
    its own log."""
    for name in names:
        with logged_to(logs[name]):
            main(
                name,
                figure_inputs(name, inputs),
                figure_settings(name, settings),
                wildcards,
                outputs[output_key(name, "png")],
            )


if "snakemake" in globals():
    draw_group(
        list(snakemake.params.figures),
        job_inputs(snakemake.input),
        snakemake.params.settings,
        dict(snakemake.wildcards.items()),
        dict(snakemake.output.items()),
        dict(snakemake.log.items()),
    )
