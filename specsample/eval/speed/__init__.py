"""Speed measurement: timing, the benchmark, the bound, the profiler-trace breakdown, reports."""
