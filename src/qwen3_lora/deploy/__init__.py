"""Getting a trained adapter into use: merging it into its base, and serving it over HTTP."""
