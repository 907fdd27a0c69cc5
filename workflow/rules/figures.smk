# Figures: the paper's plots, each as PNG (for the report) and PDF (for papers). Every module of
# workflow/unitablation/figures/ that declares a SPEC is one figure; one rule per scope draws all
# of that scope's figures in one job (one per studied (model, layer), one per model, one for the
# study: a job is mostly the Python start), each figure with its own outputs, log and report
# caption, the inputs of its entry and the union of its figures' config keys as params.


rule figure_layer:
    input:
        unpack(figure_group_inputs("layer")),
    output:
        **figure_group_outputs("layer"),
    log:
        **figure_group_logs("layer"),
    benchmark:
        "results/benchmarks/figure_layer/{model}/{layer}.tsv"
    conda:
        env_file("analysis")
    params:
        figures=figure_group_names("layer"),
        settings=figure_group_settings("layer"),
        captions=figure_group_captions("layer"),
    script:
        script_file("figure.py")


rule figure_model:
    input:
        unpack(figure_group_inputs("model")),
    output:
        **figure_group_outputs("model"),
    log:
        **figure_group_logs("model"),
    benchmark:
        "results/benchmarks/figure_model/{model}.tsv"
    conda:
        env_file("analysis")
    params:
        figures=figure_group_names("model"),
        settings=figure_group_settings("model"),
        captions=figure_group_captions("model"),
    script:
        script_file("figure.py")


rule figure_study:
    input:
        unpack(figure_group_inputs("study")),
    output:
        **figure_group_outputs("study"),
    log:
        **figure_group_logs("study"),
    benchmark:
        "results/benchmarks/figure_study/comparison.tsv"
    conda:
        env_file("analysis")
    params:
        figures=figure_group_names("study"),
        settings=figure_group_settings("study"),
        captions=figure_group_captions("study"),
    script:
        script_file("figure.py")
