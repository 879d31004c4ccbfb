"""Heatmaps: CAM maps from the engine's outputs to colour overlay PNGs."""
