"""Empirical privacy audits of the DP-SGD training recipe: membership inference, a one-run
canary lower bound on ε, and a gradient-inversion probe (small CPU models on synthetic
keypoint windows)."""
