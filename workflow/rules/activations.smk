# Activations: one forward pass per (model, image set) into HDF5, and the baseline accuracy.


rule extract_activations:
    input:
        images=split_source,
        weights=model_weights,
    output:
        store="results/{model}/activations/{split}.h5",
    log:
        "results/logs/extract_activations/{model}_{split}.log",
    conda:
        env_file("torch")
    threads: config["activations"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        model=model_spec_params,
        layers=layers_of,
        activations=config["activations"],
        device=config["device"],
    script:
        script_file("extract_activations.py")


rule baseline_accuracy:
    input:
        store="results/{model}/activations/eval.h5",
    output:
        table=report(
            "results/{model}/baseline.csv",
            caption="../report/baseline.rst",
            category="Baseline",
            labels={"model": "{model}"},
        ),
    log:
        "results/logs/baseline_accuracy/{model}.log",
    conda:
        env_file("analysis")
    script:
        script_file("baseline_accuracy.py")
