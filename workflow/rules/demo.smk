# Synthetic demo data: chest CT phantoms with region masks, region reports and labels.


rule demo_data:
    output:
        root=directory("results/{dataset}/raw"),
    params:
        layout=lambda wc: dataset_config(wc.dataset)["layout"],
        generate=lambda wc: dataset_config(wc.dataset)["generate"],
    threads: 2  # processes drawing the phantoms (the data set does not depend on it)
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/demo_data.log",
    script:
        "../scripts/demo_data.py"
