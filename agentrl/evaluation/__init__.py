"""Held-out evaluation: the evaluator (`evaluator`), its records, metrics, manifests, reports and resumable
store, and the data filter that keeps evaluation questions out of training (`overlap`, `filter`)."""
