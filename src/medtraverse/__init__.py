"""medtraverse: language-guided latent traversal of Stable Diffusion for medical images."""

__version__ = "0.1.0"
