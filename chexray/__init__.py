"""CheXray: inference server for chest X-rays."""

__version__ = "0.1.0"
