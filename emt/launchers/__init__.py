"""What launch/ scripts call: pre-flight checks, plans, submission of train/eval/serve, status."""
