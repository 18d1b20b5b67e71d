"""The trajectory viewer: one self-contained HTML page per dataset, linked from the report."""


include: "viewer_helpers.smk"


rule render_viewer:
    input:
        shards=all_shard_dirs,
        scores=score_files,
        real_shards=real_shard_dirs,
        real_scores=real_score_files,
        src=stage_code("viewer"),
    output:
        report(
            f"{RESULTS}/viewer/{{dataset}}.html",
            caption="../report/viewer.rst",
            category="Viewer",
            labels={"dataset": "{dataset}", "page": "trajectory viewer"},
        ),
    log:
        f"{LOGS}/render_viewer/{{dataset}}.log",
    benchmark:
        f"{BENCH}/render_viewer/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: 1
    params:
        viewer=viewer_params,
    shell:
        "medtraverse viewer --traversals {input.shards:q} --scores {input.scores:q}"
        " --real-traversals {input.real_shards:q} --real-scores {input.real_scores:q}"
        " --out {output:q} --params {params.viewer:q} --threads {threads} > {log:q} 2>&1"
