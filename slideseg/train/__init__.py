"""Training: images and masks, augmentation, the U-Net paper's weighted loss, the loop with
checkpoints and resume, validation.
"""
