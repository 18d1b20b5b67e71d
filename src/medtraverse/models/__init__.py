"""Stable Diffusion parts: pipelines, tokenizer, VAE, encoder cache, fine-tuning, samples."""
