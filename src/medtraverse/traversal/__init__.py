"""Generation: the swap engine with shared prefixes, and Bezier interpolation of final latents."""
