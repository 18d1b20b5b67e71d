"""Submitting stages to SLURM outside the DAG."""
