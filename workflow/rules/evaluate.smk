"""Evaluation: classifiers on real images, scores of generated images, metrics and figures."""


onstart:
    # a real source's tables, when jobs (not a dry run) start
    check_real_data(config)
    check_backbones_early()


rule train_classifier:
    input:
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        src=stage_code("train-classifier"),
    output:
        directory(f"{RESULTS}/classifiers/{{dataset}}/{{classifier}}"),
    log:
        f"{LOGS}/train_classifier/{{dataset}}/{{classifier}}.log",
    benchmark:
        f"{BENCH}/train_classifier/{{dataset}}/{{classifier}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("train_classifier")
    resources:
        gpu=1,
    params:
        attributes=classifier_attributes,
        classifier=classifier_params,
    shell:
        "medtraverse train-classifier --manifest {input.data:q}/manifest.parquet"
        " --attributes {params.attributes:q} --name {wildcards.classifier} --out {output:q}"
        " --params {params.classifier:q} --threads {threads} > {log:q} 2>&1"


rule score_shard:
    input:
        shard=f"{RESULTS}/traversals/{{dataset}}/{{trajectory}}/shard-{{shard}}",
        classifiers=classifier_dirs,
        src=stage_code("score"),
    output:
        f"{RESULTS}/scores/{{dataset}}/{{trajectory}}/shard-{{shard}}.parquet",
    log:
        f"{LOGS}/score_shard/{{dataset}}/{{trajectory}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/score_shard/{{dataset}}/{{trajectory}}/{{shard}}.tsv"
    priority: 5  # the longest chain after fine-tuning; real images and the grid fill gaps
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("score")
    resources:
        gpu=1,
    params:
        score=section("score"),
        classifiers=classifier_options,
    shell:
        "medtraverse score --shard {input.shard:q} {params.classifiers}"
        " --out {output:q} --params {params.score:q} --threads {threads} > {log:q} 2>&1"


rule aggregate_metrics:
    input:
        scores=score_files,
        shards=all_shard_dirs,
        classifiers=classifier_dirs,
        data=f"{RESULTS}/data/{{dataset}}/prepared",
        src=stage_code("aggregate"),
    output:
        report(
            directory(f"{RESULTS}/metrics/{{dataset}}"),
            patterns=["{name}.png", "{name}.csv"],
            category="Metrics",
            subcategory="{dataset}",
        ),
    log:
        f"{LOGS}/aggregate_metrics/{{dataset}}.log",
    benchmark:
        f"{BENCH}/aggregate_metrics/{{dataset}}.tsv"
    priority: 5  # the longest chain after fine-tuning; real images and the grid fill gaps
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("aggregate")
    params:
        metrics=metrics_params,
    shell:
        "medtraverse aggregate --traversals {input.shards:q} --scores {input.scores:q}"
        " --classifiers {input.classifiers:q} --manifest {input.data:q}/manifest.parquet"
        " --out {output:q} --params {params.metrics:q} --threads {threads} > {log:q} 2>&1"


# --- real images: scores of the traversals from inverted images, and their metrics -----------


rule score_real_shard:
    input:
        shard=f"{RESULTS}/real/{{dataset}}/{{trajectory}}/shard-{{shard}}",
        classifiers=classifier_dirs,
        src=stage_code("score"),
    output:
        f"{RESULTS}/scores-real/{{dataset}}/{{trajectory}}/shard-{{shard}}.parquet",
    log:
        f"{LOGS}/score_real_shard/{{dataset}}/{{trajectory}}/{{shard}}.log",
    benchmark:
        f"{BENCH}/score_real_shard/{{dataset}}/{{trajectory}}/{{shard}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("score")
    resources:
        gpu=1,
    params:
        score=real_score_params,
        classifiers=classifier_options,
    shell:
        "medtraverse score --shard {input.shard:q} {params.classifiers}"
        " --out {output:q} --params {params.score:q} --threads {threads} > {log:q} 2>&1"


rule aggregate_real:
    input:
        scores=real_score_files,
        inversions=inversion_dirs,
        traversals=real_shard_dirs,
        src=stage_code("aggregate-real"),
    output:
        report(
            directory(f"{RESULTS}/metrics-real/{{dataset}}"),
            patterns=["{name}.png", "{name}.csv"],
            category="Real images",
            subcategory="{dataset}",
        ),
    log:
        f"{LOGS}/aggregate_real/{{dataset}}.log",
    benchmark:
        f"{BENCH}/aggregate_real/{{dataset}}.tsv"
    conda:
        "../../envs/medtraverse.yaml"
    threads: rule_threads("aggregate")
    params:
        metrics=metrics_params,
    shell:
        "medtraverse aggregate-real --scores {input.scores:q}"
        " --inversions {input.inversions:q} --traversals {input.traversals:q} --out {output:q}"
        " --params {params.metrics:q} --threads {threads} > {log:q} 2>&1"
