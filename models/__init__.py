"""Model presets and model tooling (installed as eager_mlx.models)."""
