# Ablation: every unit of every layer removed in turn, in shards; merged into drop tables.


rule ablate_shard:
    input:
        unpack(factory_input),
        store="results/{model}/activations/eval/{layer}.h5",
        weights=model_weights,
        images=eval_images,
    output:
        shard="results/{model}/{layer}/{basis}/shards/{shard}.h5",
    log:
        "results/logs/ablate_shard/{model}/{layer}/{basis}/{shard}.log",
    benchmark:
        "results/benchmarks/ablate_shard/{model}/{layer}/{basis}/{shard}.tsv"
    conda:
        env_file("torch")
    threads: config["ablation"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        units=shard_units,
        model=model_spec_params,
        ablation=shard_settings,
        device=config["device"],
    script:
        script_file("ablate_shard.py")


rule merge_ablation:
    input:
        shards=shard_files,
        store="results/{model}/activations/eval/{layer}.h5",
    output:
        drops=report(
            "results/{model}/{layer}/{basis}/drops.csv",
            caption="../report/drops.rst",
            category="Ablation",
            subcategory="{model}",
            labels={"layer": "{layer}", "basis": "{basis}"},
        ),
        class_drops="results/{model}/{layer}/{basis}/class_drops.csv",
        prob_drops="results/{model}/{layer}/{basis}/class_prob_drops.h5",
    log:
        "results/logs/merge_ablation/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/merge_ablation/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("torch")
    params:
        ablation={"hurt_thresholds": config["ablation"]["hurt_thresholds"]},
    script:
        script_file("merge_ablation.py")
