"""Task scoring: HumanEval (sandboxed execution), summarization, statistics, parity checks."""
