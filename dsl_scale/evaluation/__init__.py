"""Evaluation (docs/method.md §6): MAUVE on our own features, generative perplexity, entropy, likelihood bounds.

Entry point: `launchers/evaluate.py` → `run.run_evaluation(EvalConfig)`; `run.evaluate` returns the
results dict without writing it.
"""
