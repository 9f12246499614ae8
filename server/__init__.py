"""Coordinator side of SemioFed: Flower ServerApp, consortium orchestration, model registry."""
