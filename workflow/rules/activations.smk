# Activations: forward passes over each image set into HDF5 (one store per layer, so adding a
# layer leaves the others' stores and everything downstream of them untouched), and the baseline.
# Class names (class_inputs): a model entry's class list, or for the concept split of a model
# not trained here the eval split's class folders (only their names are read).


rule extract_activations:
    input:
        unpack(class_inputs),
        unpack(factory_input),
        images=split_source,
        weights=model_weights,
    output:
        store="results/{model}/activations/{split}/{layer}.h5",
    log:
        "results/logs/extract_activations/{model}_{split}_{layer}.log",
    benchmark:
        "results/benchmarks/extract_activations/{model}_{split}_{layer}.tsv"
    conda:
        env_file("torch")
    threads: config["activations"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        model=model_spec_params,
        layers=job_layer,
        activations=activation_settings,
        device=config["device"],
    script:
        script_file("extract_activations.py")


rule extract_outputs:
    input:
        unpack(class_inputs),
        unpack(factory_input),
        images=split_source,
        weights=model_weights,
    output:
        store="results/{model}/activations/{split}.h5",
    log:
        "results/logs/extract_outputs/{model}_{split}.log",
    benchmark:
        "results/benchmarks/extract_outputs/{model}_{split}.tsv"
    conda:
        env_file("torch")
    threads: config["activations"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        model=model_spec_params,
        layers=[],
        activations=activation_settings,
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
    benchmark:
        "results/benchmarks/baseline_accuracy/{model}.tsv"
    conda:
        env_file("analysis")
    script:
        script_file("baseline_accuracy.py")
