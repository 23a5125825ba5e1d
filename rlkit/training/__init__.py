"""Actor / critic / reference models, optimizers and the worker that owns them."""
