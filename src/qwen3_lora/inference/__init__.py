"""Answering task queries: the Predictor, the decode rule, label scoring, span-constrained
extraction, generation and streaming, and the router that chains the four tasks."""
