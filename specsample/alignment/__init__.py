"""Draft alignment (Goel et al. 2024): distillation data, losses, fine-tuning, evaluation."""
