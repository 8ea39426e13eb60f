"""DistillSpec: building draft models from a target and distilling them toward it."""
