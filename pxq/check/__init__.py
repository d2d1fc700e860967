"""History model and checkers: histories as JSONL, and the safety and liveness checkers run over them."""
