# Figures: the paper's plots, each as PNG (for the report) and PDF (for papers). Every module of
# workflow/unitablation/figures/ that declares a SPEC is one figure; one rule per scope draws
# them (a per-layer figure for each studied layer, a per-model one for each model, a study one
# once), with the inputs, config keys and caption of the figure's entry.


rule figure_layer:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            "results/figures/{model}/{layer}/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "{figure}", "layer": "{layer}"},
        ),
        pdf="results/figures/{model}/{layer}/{figure}.pdf",
    log:
        "results/logs/figure_{figure}/{model}/{layer}.log",
    benchmark:
        "results/benchmarks/figure_{figure}/{model}/{layer}.tsv"
    wildcard_constraints:
        figure=figure_names("layer"),
    conda:
        env_file("analysis")
    params:
        settings=figure_settings,
        caption=figure_caption,
    script:
        script_file("figure.py")


rule figure_model:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            "results/figures/{model}/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{model}",
            labels={"figure": "{figure}", "layer": "all layers"},
        ),
        pdf="results/figures/{model}/{figure}.pdf",
    log:
        "results/logs/figure_{figure}/{model}.log",
    benchmark:
        "results/benchmarks/figure_{figure}/{model}.tsv"
    wildcard_constraints:
        figure=figure_names("model"),
    conda:
        env_file("analysis")
    params:
        settings=figure_settings,
        caption=figure_caption,
    script:
        script_file("figure.py")


rule figure_study:
    input:
        unpack(figure_inputs),
    output:
        png=report(
            "results/figures/comparison/{figure}.png",
            caption="../report/figure.rst",
            category="Comparison",
            labels={"result": "{figure} figure"},
        ),
        pdf="results/figures/comparison/{figure}.pdf",
    log:
        "results/logs/figure_{figure}/comparison.log",
    benchmark:
        "results/benchmarks/figure_{figure}/comparison.tsv"
    wildcard_constraints:
        figure=figure_names("study"),
    conda:
        env_file("analysis")
    params:
        settings=figure_settings,
        caption=figure_caption,
    script:
        script_file("figure.py")
