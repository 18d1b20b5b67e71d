"""medtraverse: language-guided latent traversal of fine-tuned Stable Diffusion for medical images.

Run the demo with `make demo`; the paper with `snakemake --profile profiles/slurm`
(config/config.yaml); see README.md.
"""

from snakemake.utils import min_version, validate

from medtraverse.config import check_or_exit

min_version("9.0")


if not config:  # --configfile replaces the embedded demo; it must not be merged into it

    configfile: "config/demo.yaml"


# one line naming the key and exit status 2 before any job: the schema, every stage's settings,
# trajectory targets and metrics attributes the classifiers predict, real data present
check_or_exit(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
validate(config, "workflow/schemas/config.schema.yaml")  # fills in the defaults


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/traverse.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/viewer.smk"


if "shortcut" in config:

    include: "workflow/rules/shortcut.smk"


rule all:
    default_target: True
    input:
        all_targets(),
