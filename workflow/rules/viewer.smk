# A static site over the test predictions (reg2rg.viewer.build_viewer, docs/report.md): a case list with
# per-scan scores, one page per scan (reference and generated report region by region in the region colours,
# slices with the masks overlaid) and the metric plots. cases/ and plots/ are
# written beside index.html. Built by the default target (`all`) for the default data set; for another, ask
# for results/{dataset}/viewer/index.html. It shows the data set's case ids (never DICOM header fields).


rule viewer:
    input:
        metrics="results/{dataset}/metrics.json",
        lengths_plot="results/{dataset}/report_lengths.png",
        predictions="results/{dataset}/predictions.parquet",
        manifest="results/{dataset}/manifest/test.parquet",
    output:
        index="results/{dataset}/viewer/index.html",
    params:
        title=lambda wc: f"reg2rg test predictions: {wc.dataset}",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/core.yaml"
    log:
        "results/{dataset}/logs/viewer.log",
    script:
        "../scripts/viewer.py"
