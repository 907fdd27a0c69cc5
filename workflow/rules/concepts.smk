# Concepts: Network Dissection IoU of every unit with every Broden-format concept. unit_block and
# image_batch bound memory and change no output: resources, which (unlike params) trigger no rerun.


rule concept_iou:
    input:
        store="results/{model}/activations/concept/{layer}.h5",
        broden=concept_source,
    output:
        table=report(
            "results/{model}/{layer}/{basis}/concepts.csv",
            caption="../report/concepts.rst",
            category="Concepts",
            subcategory="{model}",
            labels={"layer": "{layer}", "basis": "{basis}"},
        ),
        matrix="results/{model}/{layer}/{basis}/concepts.h5",
    log:
        "results/logs/concept_iou/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/concept_iou/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("torch")
    threads: config["concepts"]["threads"]
    resources:
        concept_unit_block=config["concepts"]["unit_block"],
        concept_image_batch=config["concepts"]["image_batch"],
    params:
        concepts=concept_settings,
    script:
        script_file("concept_iou.py")
