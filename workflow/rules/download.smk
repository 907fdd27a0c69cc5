# Real data and models: fetch items of resources/downloads.yaml with checksums, then prepare
# what the pipeline reads (ImageFolder eval splits, torchvision-layout checkpoints).
# Their helpers (download_settings, ...: item names, wildcard patterns, command-line hints) are in
# common.smk; the work is in unitablation.download, unitablation.eval_sets and
# unitablation.checkpoints, which know nothing of Snakemake.

# Fetching runs where Snakemake runs (cluster compute nodes often have no internet access).


localrules:
    download_file,
    download_archive,


rule download_file:
    output:
        "resources/downloads/{item}/{filename}",
    log:
        "results/logs/download_file/{item}/{filename}.log",
    benchmark:
        "results/benchmarks/download_file/{item}/{filename}.tsv"
    wildcard_constraints:
        item=download_names("file"),
        filename=r"[^/]+",
    conda:
        env_file("analysis")
    params:
        item=download_settings,
    script:
        script_file("download_fetch.py")


rule download_archive:
    output:
        directory("resources/downloads/{item}"),
    log:
        "results/logs/download_archive/{item}.log",
    benchmark:
        "results/benchmarks/download_archive/{item}.tsv"
    wildcard_constraints:
        item=download_names("archive"),
    conda:
        env_file("analysis")
    params:
        item=download_settings,
    script:
        script_file("download_fetch.py")


rule prepare_places365_val:
    input:
        images=download_path("places365_val_256"),
        labels=download_path("places365_filelist"),
    output:
        directory("resources/prepared/places365_val"),
    log:
        "results/logs/prepare_places365_val.log",
    benchmark:
        "results/benchmarks/prepare_places365_val.tsv"
    conda:
        env_file("analysis")
    params:
        dataset="places365",
    script:
        script_file("prepare_eval_set.py")


rule prepare_imagenet_val:
    input:
        images=download_path("imagenet_val"),
        labels=download_path("imagenet_devkit"),
    output:
        directory("resources/prepared/imagenet_val"),
    log:
        "results/logs/prepare_imagenet_val.log",
    benchmark:
        "results/benchmarks/prepare_imagenet_val.tsv"
    conda:
        env_file("analysis")
    params:
        dataset="imagenet",
    script:
        script_file("prepare_eval_set.py")


rule convert_checkpoint:
    input:
        checkpoint=convert_source,
    output:
        "resources/prepared/weights/{item}.pt",
    log:
        "results/logs/convert_checkpoint/{item}.log",
    benchmark:
        "results/benchmarks/convert_checkpoint/{item}.tsv"
    wildcard_constraints:
        item=download_names("file", convertible=True),
    conda:
        env_file("torch")
    params:
        convert=convert_settings,
    script:
        script_file("download_convert_checkpoint.py")
