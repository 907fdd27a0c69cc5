# Models: train the miniature variants (torchvision models come with their own weights).


rule train_model:
    input:
        images=train_images,
    output:
        weights="results/{model}/model.pt",
        history="results/{model}/training.csv",
    log:
        "results/logs/train_model/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    conda:
        env_file("torch")
    threads: config["training"]["threads"]
    resources:
        gpu=gpu_count,
    params:
        model=model_spec_params,
        training=training_settings,
        seed=config["seed"],
        device=config["device"],
    script:
        script_file("train_model.py")
