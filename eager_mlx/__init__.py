"""eager-mlx: entropy-aware adaptive generation on MLX."""
