"""Classifiers on real images, scores of generated images, metrics, LPIPS/FID backbones."""
