"""Where models come from and how they load: model sources, precision, adapter folders, and the
random-weight builders used by tests, smoke runs and benchmarks."""
