"""Correlation table speed: unitablation.statistics.correlation_table against a resample loop.

Builds a seeded units table of U units (every numeric attribute and both targets drawn from a
normal distribution, a fifth of each column rounded so that ranks tie) and times, per call:

- ours: unitablation.statistics.correlation_table (all resamples ranked as one array);
- loop: the same table with the bootstrap written here as a loop of scipy.stats.spearmanr over
  the resamples, drawn from the same generators, so both CIs must agree (to 1e-12: the ranks
  are summed in another order).

Both run over all rows and all resamples (no extrapolation). Prints a table and writes the
figures as JSON. The unit tests check the vectorised path against a loop; only this script times.

    python benchmarks/correlations.py [--units 512] [--bootstrap 1000] [--repeats 3]
        [--json results/benchmarks/correlations.json]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from reporting import hardware, print_table, timed, write_report
from scipy import stats

from unitablation.attribute_registry import numeric_attributes
from unitablation.statistics import TARGETS, _rng, correlation_table

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-12
COLUMNS = [
    ("method", "method"),
    ("units", "units"),
    ("rows", "rows"),
    ("bootstrap", "resamples"),
    ("seconds", "s per table"),
    ("resamples_per_s", "resamples / s"),
    ("speedup", "ours x"),
    ("max_abs_ci_diff", "max |CI diff|"),
]


def units_table(units: int, seed: int) -> pd.DataFrame:
    """Seeded per-unit values for every numeric attribute and target, a fifth of them tied."""
    rng = np.random.default_rng(seed)
    table: dict[str, np.ndarray] = {"unit": np.arange(units)}
    for name in (*numeric_attributes(), *TARGETS):
        values = rng.normal(size=units)
        tied = rng.random(units) < 0.2
        values[tied] = np.round(values[tied])
        table[name] = values
    return pd.DataFrame(table)


def loop_cis(units: pd.DataFrame, bootstrap: int, seed: int) -> np.ndarray:
    """(rows, 2) CIs by a loop of scipy Spearman over resamples drawn like correlation_table."""
    bounds = []
    for attribute in numeric_attributes():
        for target in TARGETS:
            x, y = units[attribute].to_numpy(), units[target].to_numpy()
            draws = _rng(seed, attribute, target).integers(0, len(x), size=(bootstrap, len(x)))
            rho = []
            for index in draws:
                if np.ptp(x[index]) > 0 and np.ptp(y[index]) > 0:
                    rho.append(stats.spearmanr(x[index], y[index]).statistic)
            bounds.append(np.quantile(rho, [0.025, 0.975]))
    return np.asarray(bounds)


def main() -> None:
    """Run the benchmark, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "results" / "benchmarks" / "correlations.json"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    info = hardware(torch.get_num_threads(), packages=("scipy", "pandas"))
    print(
        f"# {info['date']}  {info['cpu']}, {info['logical_cores']} logical cores, "
        f"load {info['load_average_at_start']}; numpy {info['numpy']}, scipy {info['scipy']}"
    )
    units = units_table(args.units, args.seed)
    ours_runs = []
    for _ in range(args.repeats):
        table, seconds = timed(
            lambda: correlation_table(units, bootstrap=args.bootstrap, seed=args.seed)
        )
        ours_runs.append(seconds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop, loop_s = timed(lambda: loop_cis(units, args.bootstrap, args.seed))
    ours_s = min(ours_runs)
    ours = table[["ci_low", "ci_high"]].to_numpy()
    difference = float(np.abs(ours - loop).max())
    n_rows = len(table)
    rows = [
        {
            "method": method,
            "units": args.units,
            "rows": n_rows,
            "bootstrap": args.bootstrap,
            "seconds": seconds,
            "resamples_per_s": n_rows * args.bootstrap / seconds,
            "speedup": seconds / ours_s,
            "max_abs_ci_diff": difference,
        }
        for method, seconds in (("ours", ours_s), ("scipy loop", loop_s))
    ]
    print()
    print_table(rows, COLUMNS)
    print()
    agree = difference <= TOLERANCE
    print(f"ours runs (s): {', '.join(f'{t:.3f}' for t in ours_runs)}; CIs agree: {agree}")
    total = time.perf_counter() - started
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"total {total:.0f} s; load average at end {info['load_average_at_end']}")
    report = {
        "hardware": info,
        "settings": {key: value for key, value in vars(args).items() if key != "json"},
        "ours_runs_s": ours_runs,
        "speedup_vs_loop": loop_s / ours_s,
        "max_abs_ci_diff": difference,
        "cis_agree": agree,
        "rows": rows,
        "total_s": total,
    }
    write_report(args.json, report)
    if not agree:
        raise SystemExit("bootstrap CIs differ between the implementation and the loop")


if __name__ == "__main__":
    main()
