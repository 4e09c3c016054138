"""Engines that run the U-Net: PyTorch (CPU/CUDA), ONNX Runtime and TensorRT.

:mod:`slideseg.engines.registry` builds one for a model file (``load_engine``); ``base`` is the
interface every engine implements; optional backends are imported only when chosen.
"""
