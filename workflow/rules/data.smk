# Data: the embedded image world, as an ImageFolder (train/val) and a Broden-layout concept set.


rule generate_world:
    output:
        images=directory(f"{WORLD_DIR}/images"),
        broden=directory(f"{WORLD_DIR}/broden"),
    params:
        world=config["world"],
        seed=config["seed"],
    log:
        "results/logs/generate_world.log",
    conda:
        env_file("world")
    threads: 1
    script:
        script_file("generate_world.py")
