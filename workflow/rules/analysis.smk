# Analysis: the per-unit table, correlations, class prediction, comparisons, cumulative ablation
# and the generated summary.


rule unit_table:
    input:
        unpack(concept_table_input),
        drops="results/{model}/{layer}/{basis}/drops.csv",
        class_drops="results/{model}/{layer}/{basis}/class_drops.csv",
        prob_drops="results/{model}/{layer}/{basis}/class_prob_drops.h5",
        attributes="results/{model}/{layer}/{basis}/attributes.csv",
    output:
        table=report(
            "results/{model}/{layer}/{basis}/units.csv",
            caption="../report/units.rst",
            category="Tables",
            subcategory="{model}",
            labels={"table": "units", "layer": "{layer}", "basis": "{basis}"},
        ),
    log:
        "results/logs/unit_table/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/unit_table/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("analysis")
    params:
        iou_threshold=detector_threshold,
    script:
        script_file("unit_table.py")


rule layer_statistics:
    input:
        units="results/{model}/{layer}/{basis}/units.csv",
        class_drops="results/{model}/{layer}/{basis}/class_drops.csv",
        prob_drops="results/{model}/{layer}/{basis}/class_prob_drops.h5",
    output:
        correlations=report(
            "results/{model}/{layer}/{basis}/correlations.csv",
            caption="../report/correlations.rst",
            category="Tables",
            subcategory="{model}",
            labels={"table": "correlations", "layer": "{layer}", "basis": "{basis}"},
        ),
        class_prediction=report(
            "results/{model}/{layer}/{basis}/class_prediction.csv",
            caption="../report/class_prediction.rst",
            category="Tables",
            subcategory="{model}",
            labels={
                "table": "class prediction",
                "layer": "{layer}",
                "basis": "{basis}",
            },
        ),
        concentration=report(
            "results/{model}/{layer}/{basis}/concentration.csv",
            caption="../report/concentration.rst",
            category="Tables",
            subcategory="{model}",
            labels={
                "table": "concentration",
                "layer": "{layer}",
                "basis": "{basis}",
            },
        ),
    log:
        "results/logs/layer_statistics/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/layer_statistics/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("analysis")
    params:
        analysis=analysis_settings,
        seed=config["seed"],
    script:
        script_file("layer_statistics.py")


rule compare:
    input:
        units=comparison_units,
        correlations=comparison_correlations,
        class_prediction=comparison_predictions,
        concentration=comparison_concentration,
        baselines=baselines,
    output:
        variants=report(
            "results/comparison/variants.csv",
            caption="../report/variants.rst",
            category="Comparison",
            labels={"result": "variants table"},
        ),
        rotation=report(
            "results/comparison/rotation.csv",
            caption="../report/rotation.rst",
            category="Comparison",
            labels={"result": "rotation table"},
        ),
    log:
        "results/logs/compare.log",
    benchmark:
        "results/benchmarks/compare.tsv"
    conda:
        env_file("analysis")
    params:
        models=model_names(),
    script:
        script_file("compare.py")


rule cumulative_ablation:
    input:
        unpack(factory_input),
        store="results/{model}/activations/eval/{layer}.h5",
        weights=model_weights,
        images=eval_images,
    output:
        table=report(
            "results/{model}/{layer}/unit/cumulative.csv",
            caption="../report/cumulative.rst",
            category="Tables",
            subcategory="{model}",
            labels={
                "table": "cumulative ablation",
                "layer": "{layer}",
                "basis": "unit",
            },
        ),
    log:
        "results/logs/cumulative_ablation/{model}/{layer}.log",
    benchmark:
        "results/benchmarks/cumulative_ablation/{model}/{layer}.tsv"
    conda:
        env_file("torch")
    threads: config["cumulative"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        model=model_spec_params,
        cumulative=cumulative_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        script_file("cumulative_ablation.py")


rule summary:
    input:
        variants="results/comparison/variants.csv",
        rotation="results/comparison/rotation.csv",
        cumulative=all_cumulative_tables,
    output:
        summary=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
            labels={"document": "summary"},
        ),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        env_file("analysis")
    script:
        script_file("summary.py")
