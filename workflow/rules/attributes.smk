# Attributes: per-unit weight norms, class selectivity and class correlation.


rule unit_attributes:
    input:
        unpack(factory_input),
        store="results/{model}/activations/eval/{layer}.h5",
        weights=model_weights,
    output:
        table=report(
            "results/{model}/{layer}/{basis}/attributes.csv",
            caption="../report/attributes.rst",
            category="Attributes",
            subcategory="{model}",
            labels={"layer": "{layer}", "basis": "{basis}"},
        ),
        matrices="results/{model}/{layer}/{basis}/attributes.h5",
    log:
        "results/logs/unit_attributes/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/unit_attributes/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("torch")
    params:
        model=model_spec_params,
    script:
        script_file("unit_attributes.py")
