"""Training data: annotations, zero-shot splits, windows of features with their labels, the torch dataset."""
