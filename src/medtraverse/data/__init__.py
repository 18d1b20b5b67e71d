"""Raw data to manifests: the synthetic twins and dataset preparation."""
