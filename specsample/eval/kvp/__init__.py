"""KV Prediction measurement: time to first token and quality."""
