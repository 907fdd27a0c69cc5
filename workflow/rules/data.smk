# Data: the embedded image world, as an ImageFolder (train/val) and a Broden-layout concept set.


rule generate_world:
    output:
        train=directory(f"{WORLD_DIR}/train"),
        val=directory(f"{WORLD_DIR}/val"),
        broden=directory(f"{WORLD_DIR}/broden"),
    log:
        "results/logs/generate_world.log",
    benchmark:
        "results/benchmarks/generate_world.tsv"
    conda:
        env_file("world")
    threads: 1
    params:
        world=world_settings,
        seed=config["seed"],
    script:
        script_file("generate_world.py")
