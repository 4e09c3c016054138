"""The U-Net: its configuration (torch-free), the network, model files and external models.

Import the submodule you need: ``model.config`` stays light, ``model.unet`` and ``model.files``
import torch.
"""
