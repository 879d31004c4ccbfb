"""Offline conversion: Keras members and the PyTorch CAM network to one ONNX model repository.

The only package of CheXray that imports tensorflow or torch, and only inside the job
processes (`keras_job`, `cam_job`) so that the orchestrating process stays light.
"""
