"""Flower apps (ServerApp, ClientApp), Hydra composition, sweeps and comparisons."""
