"""The whole pipeline through profiles/slurm on a real single-node SLURM cluster on localhost.

tests/slurm/local_cluster.sh installs and starts SLURM (root, Debian packages). A small config of
the whole DAG (every rule, one model, one layer) runs through the slurm executor with the real
profile plus a test layer (this node's partition, CPU only, memory and threads that fit 2 CPUs,
fast status polling). The test proves every job was a SLURM job: the jobs SLURM ran under the
run's id, named by rule and wildcards in their comments, are exactly the jobs Snakemake planned
(rule `all` apart, the only job Snakemake runs itself), all COMPLETED, each with its SLURM log.
The CSV tables must be byte-identical to a local `--cores 2` run of the same config.

It fails, saying why, when it cannot run (not root, no apt, SLURM does not start). Only
UNITABLATION_SKIP_SLURM=1 skips it, visibly; CI never sets that.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from workflow_runs import ROOT, TINY, snakemake_command, start_snakemake

from unitablation.figures import registry as figure_registry

PROFILE = ROOT / "profiles" / "slurm"
CLUSTER_SCRIPT = ROOT / "tests" / "slurm" / "local_cluster.sh"
STATE_DIR = Path(os.environ.get("UNITABLATION_SLURM_DIR", "/tmp/unitablation-slurm"))
PARTITION = "local"  # the partition local_cluster.sh defines
SKIP_VARIABLE = "UNITABLATION_SKIP_SLURM"
#: Rules that run torch on the network: one GPU each when config device is cuda.
GPU_RULES = {"train_model", "extract_activations", "ablate_shard", "cumulative_ablation"}
#: The pipeline's rules (others may join); the small config must still run each of them.
PIPELINE_RULES = GPU_RULES | {
    "generate_world",
    "baseline_accuracy",
    "merge_ablation",
    "unit_attributes",
    "concept_iou",
    "unit_table",
    "layer_statistics",
    "compare",
    "summary",
    # the registered figures, drawn by one rule per scope
    *(figure_registry.rule_name(scope) for scope in ("layer", "model", "study")),
}
TEST_MEM_MB = 1000  # per job; the node has 2 CPUs, so at most 2 jobs run at once

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: Path) -> tuple[int, str]:
    """Run Snakemake on the project's Snakefile in `workdir`: exit status, stdout + stderr."""
    result = subprocess.run(
        snakemake_command(workdir, *args, config=config),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1500,
    )
    return result.returncode, result.stdout


def cluster_script(command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """tests/slurm/local_cluster.sh start|status|stop."""
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "UNITABLATION_SLURM_DIR": str(STATE_DIR)},
    )


@pytest.fixture(scope="module")
def local_slurm():
    """Start the local cluster; stop it afterwards unless it was already up."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1 is set: the real-SLURM test is switched off")
    if os.geteuid() != 0:
        pytest.fail(
            "the SLURM test needs root: tests/slurm/local_cluster.sh installs munge and SLURM "
            f"with apt-get and starts their daemons (uid is {os.geteuid()}); "
            f"set {SKIP_VARIABLE}=1 to skip it knowingly"
        )
    was_running = cluster_script("status", timeout=60).returncode == 0
    started = cluster_script("start")
    if started.returncode != 0:
        pytest.fail(
            "could not start the local SLURM cluster (tests/slurm/local_cluster.sh start, "
            f"exit {started.returncode}):\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        )
    try:
        yield
    finally:
        if not was_running:
            cluster_script("stop", timeout=120)


def small_config(path: Path) -> Path:
    """The tiny config cut to one model, one layer, one shard per layer, no rotated basis."""
    config = yaml.safe_load(TINY.read_text())
    config["models"] = {"plain": config["models"]["plain"]}
    config["layers"] = ["features.relu5"]
    config["rotation"] = {"seeds": []}
    config["ablation"]["shard_size"] = 8
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def profile_test_layer(profile: dict) -> dict:
    """profiles/slurm adapted to the 2-CPU test node: what a CPU-only cluster user overrides.

    Later --profile entries replace whole top-level keys, so the resource maps are rebuilt
    from the real profile's: same rules and runtimes, memory and threads that fit the node.
    """
    defaults = dict(profile["default-resources"])
    del defaults["slurm_account"]  # the test cluster has no accounts
    defaults["slurm_partition"] = PARTITION
    defaults["mem_mb"] = min(defaults["mem_mb"], TEST_MEM_MB)
    resources = {
        rule: {**values, "mem_mb": min(values["mem_mb"], TEST_MEM_MB)}
        for rule, values in profile["set-resources"].items()
    }
    return {
        "config": {"device": "cpu"},  # no GPU here: the torch rules then hold gpu=0
        "default-resources": defaults,
        "set-resources": resources,
        "set-threads": dict.fromkeys(profile["set-threads"], 1),  # as the local run's config
        "jobs": 4,  # SLURM queues what does not fit; each job asks 1 CPU of 2
        "retries": 0,  # a failing job fails the test
        "latency-wait": 5,
        "slurm-status-command": "squeue",  # no accounting daemon; MinJobAge is 3600
        # Seconds to the first status check of new jobs; the plugin adds 10 s after each check
        # that finds none finished, so checks come 4, 18, 42 s after a submission: 4 suits
        # jobs of 5-18 s (each restarts Snakemake twice: the job, then its srun step).
        "slurm-init-seconds-before-status-checks": 4,
        "slurm-keep-successful-logs": True,
    }


def job_stats(output: str) -> collections.Counter:
    """The "Job stats" table Snakemake prints before running: jobs per rule."""
    table = output.split("Job stats:", 1)[1]
    counts = collections.Counter()
    for line in table.splitlines()[3:]:
        name, _, count = line.strip().rpartition(" ")
        if not line.strip() or name.strip() == "total":
            break
        counts[name.strip()] = int(count)
    return counts


def slurm_jobs(run_id: str) -> list[tuple[str, str, str]]:
    """(job id, state, comment) of every SLURM job named after this run, finished ones too."""
    listing = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i|%T|%k"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [tuple(line.split("|", 2)) for line in listing.stdout.splitlines() if line.strip()]


def rule_of(comment: str) -> str:
    """Rule name in the comment the plugin gives a job: rule_<name>[_wildcards_<values>]."""
    assert comment.startswith("rule_"), comment
    return comment.removeprefix("rule_").split("_wildcards_", 1)[0]


def tables(workdir: Path) -> dict[str, bytes]:
    """Every CSV under results/ except the logs, by relative path."""
    results = workdir / "results"
    return {
        str(path.relative_to(results)): path.read_bytes()
        for path in sorted(results.rglob("*.csv"))
        if path.relative_to(results).parts[0] != "logs"
    }


def planned_resources(output: str) -> dict[str, str]:
    """Rule name -> the `resources:` line of its (last) job in a dry run's output."""
    resources, rule = {}, None
    for line in output.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and line.startswith("    resources: "):
            resources[rule] = line.removeprefix("    resources: ")
    return resources


def test_slurm_profile_sizes_every_rule(tmp_path: Path) -> None:
    """Dry run through profiles/slurm: every job gets the profile's sizes; GPU jobs one GPU."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    status, listed = snakemake(tmp_path, "--list-rules", config=TINY)
    assert status == 0, listed[-3000:]
    rules = set(listed.split())
    for key in ("set-resources", "set-threads"):
        unknown = set(profile[key]) - rules
        assert not unknown, f"{key} in profiles/slurm names no rule: {unknown}"
    assert not {"slurm_account", "slurm_partition", "mem_mb", "runtime"} - set(
        profile["default-resources"]
    )

    status, dry = snakemake(tmp_path, "-n", "--profile", str(PROFILE), config=TINY)
    assert status == 0, dry[-3000:]
    planned = planned_resources(dry)
    planned.pop("all", None)
    assert not PIPELINE_RULES - set(planned), PIPELINE_RULES - set(planned)
    unsized = set(planned) - set(profile["set-resources"])
    assert not unsized, f"rules without set-resources in profiles/slurm: {unsized}"
    gpu_rules = {rule for rule, line in planned.items() if re.search(r"\bgpu=1\b", line)}
    assert gpu_rules >= GPU_RULES  # device=cuda from the profile: the torch rules hold a GPU
    for rule, line in planned.items():
        values = profile["set-resources"][rule]
        assert {"mem_mb", "runtime"} <= set(values), rule
        assert f"mem_mb={values['mem_mb']}," in line and f"runtime={values['runtime']}" in line
        assert "slurm_partition=SET_YOUR_PARTITION" in line, line
        assert "--gres" not in str(values.get("slurm_extra", "")), rule
        assert ("cpus_per_gpu" in values) == (rule in gpu_rules), rule


@pytest.mark.usefixtures("local_slurm")
def test_pipeline_through_slurm_matches_a_local_run(tmp_path: Path) -> None:
    config = small_config(tmp_path / "small.yaml")
    layer = tmp_path / "slurm-test-profile"
    layer.mkdir()
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    (layer / "config.yaml").write_text(yaml.safe_dump(profile_test_layer(profile)))
    cluster_dir, local_dir = tmp_path / "cluster", tmp_path / "local"
    cluster_dir.mkdir()
    local_dir.mkdir()

    # The local reference run goes on alongside the cluster run, which mostly waits for SLURM's
    # status checks; it is checked first: a broken pipeline shows there, not as a failed SLURM job.
    local = start_snakemake(local_dir, "--cores", "2", config=config)
    try:
        started = time.monotonic()
        status, output = snakemake(
            cluster_dir, "--profile", str(PROFILE), "--profile", str(layer), config=config
        )
        cluster_seconds = time.monotonic() - started
        reference = local.result()
    finally:
        local.stop()
    local_status, local_output = reference.returncode, reference.stdout + reference.stderr
    assert local_status == 0, local_output[-6000:]
    assert status == 0, output[-6000:]

    # Every job Snakemake planned ran as a SLURM job of this run, and only rule `all` locally.
    planned = job_stats(output)
    assert not PIPELINE_RULES - set(planned), PIPELINE_RULES - set(planned)
    assert job_stats(local_output) == planned  # the same DAG as the local run
    assert planned.pop("all") == 1
    assert re.findall(r"^localrule (\w+):", output, re.MULTILINE) == ["all"]
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    jobs = slurm_jobs(run_id)
    assert collections.Counter(rule_of(comment) for _, _, comment in jobs) == planned
    assert len({job_id for job_id, _, _ in jobs}) == len(jobs) == sum(planned.values())
    assert {state for _, state, _ in jobs} == {"COMPLETED"}
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", output))
    assert submitted == {job_id for job_id, _, _ in jobs}
    # slurmd wrote each job's output: Snakemake inside the allocation ran the job's rule.
    slurm_logs = cluster_dir / ".snakemake" / "slurm_logs"
    for job_id, _, comment in jobs:
        (log,) = slurm_logs.glob(f"rule_{rule_of(comment)}/**/{job_id}.log")
        assert f"Finished jobid: 0 (Rule: {rule_of(comment)})" in log.read_text(), log

    cluster_tables, local_tables = tables(cluster_dir), tables(local_dir)
    assert len(cluster_tables) >= 12 and cluster_tables.keys() == local_tables.keys()
    differ = [name for name in cluster_tables if cluster_tables[name] != local_tables[name]]
    assert not differ, f"tables differ between the SLURM and the local run: {differ}"
    print(
        f"\n{len(jobs)} SLURM jobs in {cluster_seconds:.0f} s (the local run alongside); "
        f"{len(cluster_tables)} CSV tables byte-identical"
    )
