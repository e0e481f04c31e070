"""The eager-mlx command line (installed as eager_mlx.cli)."""
