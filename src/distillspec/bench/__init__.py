"""`distillspec bench`: side-by-side speed and acceptance measurements (see bench_cmd.py)."""
