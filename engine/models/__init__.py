"""Model manifest, store (download/verify/import), loaders and the loaded-model cache."""
