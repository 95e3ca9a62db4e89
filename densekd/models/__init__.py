"""Model builders with their canonical distillation points."""
