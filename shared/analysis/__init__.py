"""Clinical analysis of one recording: evolution, semiology, confidence, open-set, explanations, report."""
