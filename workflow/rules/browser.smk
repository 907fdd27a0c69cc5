# Unit browser: one static page (results/browser/index.html) with every unit of every studied
# (model, layer, basis): a sortable, filterable table, a card per unit (top concept images with
# their masks, top eval images, most-hurt classes, attributes) and a view per class. One data
# script per (model, layer, basis), then the page, which copies the images it shows beside it.


rule browser_layer:
    input:
        unpack(browser_layer_inputs),
        units="results/{model}/{layer}/{basis}/units.csv",
        class_drops="results/{model}/{layer}/{basis}/class_drops.csv",
        eval_store="results/{model}/activations/eval/{layer}.h5",
        eval_images=eval_images,
    output:
        script="results/browser/data/{model}/{layer}/{basis}.js",
        images="results/browser/data/{model}/{layer}/{basis}.images.json",
    log:
        "results/logs/browser_layer/{model}/{layer}/{basis}.log",
    benchmark:
        "results/benchmarks/browser_layer/{model}/{layer}/{basis}.tsv"
    conda:
        env_file("analysis")
    params:
        browser=browser_settings,
    script:
        script_file("browser_layer.py")


rule browser:
    input:
        scripts=browser_scripts,
        images=browser_image_lists,
    output:
        page="results/browser/index.html",
        images=directory("results/browser/images"),
    log:
        "results/logs/browser/index.log",
    benchmark:
        "results/benchmarks/browser/index.tsv"
    conda:
        env_file("analysis")
    params:
        entries=browser_entries,
        title="Unit browser",
    script:
        script_file("browser_page.py")
