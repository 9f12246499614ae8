"""The site's clinical analysis of one recording (``site analyze``): evolution, semiology,
live onset alarms, the pipeline and the HTML report. The parts the coordinator also runs
(calibration merges, the anomaly model, explanations) are in :mod:`semiofed.shared.analysis`."""
