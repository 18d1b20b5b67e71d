"""Helpers of the viewer rule (viewer.smk), apart from its rule so `snakemake --lint` is clean."""


def viewer_params(wildcards):
    """The dataset's `viewer` section, with each trajectory's target (shown first)."""
    ds = dataset_config(wildcards)
    params = dict(ds.get("viewer", {}))
    params["targets"] = {
        name: traj["target"] for name, traj in ds["traverse"]["trajectories"].items()
    }
    return as_json(params)
