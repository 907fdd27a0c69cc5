# Figures: the paper's plots, each as PNG (for the report) and PDF (for papers).


rule figure_drops:
    input:
        units=unit_tables_all_bases,
    output:
        png=report(
            "results/figures/{model}/{layer}/drops.png",
            caption="../report/figure_drops.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "drops", "layer": "{layer}"},
        ),
        pdf="results/figures/{model}/{layer}/drops.pdf",
    log:
        "results/logs/figure_drops/{model}/{layer}.log",
    conda:
        env_file("analysis")
    params:
        dpi=figure_dpi,
    script:
        script_file("figure_drops.py")


rule figure_examples:
    input:
        unpack(example_concept_inputs),
        units="results/{model}/{layer}/unit/units.csv",
        class_drops="results/{model}/{layer}/unit/class_drops.csv",
    output:
        png=report(
            "results/figures/{model}/{layer}/examples.png",
            caption="../report/figure_examples.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "examples", "layer": "{layer}"},
        ),
        pdf="results/figures/{model}/{layer}/examples.pdf",
    log:
        "results/logs/figure_examples/{model}/{layer}.log",
    conda:
        env_file("analysis")
    params:
        figures=figure_settings,
    script:
        script_file("figure_examples.py")


rule figure_attributes:
    input:
        units="results/{model}/{layer}/unit/units.csv",
        correlations="results/{model}/{layer}/unit/correlations.csv",
    output:
        png=report(
            "results/figures/{model}/{layer}/attributes.png",
            caption="../report/figure_attributes.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "attributes", "layer": "{layer}"},
        ),
        pdf="results/figures/{model}/{layer}/attributes.pdf",
    log:
        "results/logs/figure_attributes/{model}/{layer}.log",
    conda:
        env_file("analysis")
    params:
        dpi=figure_dpi,
    script:
        script_file("figure_attributes.py")


rule figure_correlations:
    input:
        correlations=correlation_tables,
    output:
        png=report(
            "results/figures/{model}/correlations.png",
            caption="../report/figure_correlations.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "correlations", "layer": "all layers"},
        ),
        pdf="results/figures/{model}/correlations.pdf",
    log:
        "results/logs/figure_correlations/{model}.log",
    conda:
        env_file("analysis")
    params:
        dpi=figure_dpi,
    script:
        script_file("figure_correlations.py")


rule figure_class_prediction:
    input:
        predictions=prediction_tables,
    output:
        png=report(
            "results/figures/{model}/class_prediction.png",
            caption="../report/figure_class_prediction.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "class_prediction", "layer": "all layers"},
        ),
        pdf="results/figures/{model}/class_prediction.pdf",
    log:
        "results/logs/figure_class_prediction/{model}.log",
    conda:
        env_file("analysis")
    params:
        dpi=figure_dpi,
    script:
        script_file("figure_class_prediction.py")


rule figure_rotation:
    input:
        units=rotation_unit_tables,
    output:
        png=report(
            "results/figures/{model}/rotation.png",
            caption="../report/figure_rotation.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "rotation", "layer": "all layers"},
        ),
        pdf="results/figures/{model}/rotation.pdf",
    log:
        "results/logs/figure_rotation/{model}.log",
    conda:
        env_file("analysis")
    params:
        dpi=figure_dpi,
    script:
        script_file("figure_rotation.py")


rule figure_cumulative:
    input:
        tables=cumulative_tables,
    output:
        png=report(
            "results/figures/{model}/cumulative.png",
            caption="../report/figure_cumulative.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "cumulative", "layer": "all layers"},
        ),
        pdf="results/figures/{model}/cumulative.pdf",
    log:
        "results/logs/figure_cumulative/{model}.log",
    conda:
        env_file("analysis")
    params:
        layers=layers_of,
        dpi=figure_dpi,
    script:
        script_file("figure_cumulative.py")


rule figure_variants:
    input:
        units=variant_unit_tables,
        baselines=variant_baselines,
    output:
        png=report(
            "results/figures/comparison/variants.png",
            caption="../report/figure_variants.rst",
            category="Comparison",
            labels={"result": "variants figure"},
        ),
        pdf="results/figures/comparison/variants.pdf",
    log:
        "results/logs/figure_variants/comparison.log",
    conda:
        env_file("analysis")
    params:
        models=variant_models,
        dpi=figure_dpi,
    script:
        script_file("figure_variants.py")
