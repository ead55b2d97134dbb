"""Measuring a model: metric functions, the eval reports, and the `test` / `chat` tools."""
