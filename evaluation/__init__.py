"""Offline evaluation and calibration on labelled X-rays, on the server's own engine
(`chexray evaluate`, `chexray calibrate`). No TensorFlow or PyTorch here."""
