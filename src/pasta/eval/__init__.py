"""Evaluation: systems (Pasta async/sequential, original model, Skeleton-of-Thought), judges, statistics, reports.
See docs/eval.md."""
