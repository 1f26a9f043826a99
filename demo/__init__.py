"""Demo material that is not part of the fleet itself: the SmolLM2 demo checkpoint."""
