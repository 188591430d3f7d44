"""JAX-only code: training across devices with keras.distribution (data parallel, multi-host)."""
