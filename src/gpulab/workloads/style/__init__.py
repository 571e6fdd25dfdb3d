"""Neural style transfer: per-image optimisation (Gatys et al.) on VGG19 features."""
