"""Site (hospital) side of SemioFed: keypoint extraction, DP training, Flower ClientApp, analysis."""
