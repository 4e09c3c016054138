"""Writing masks: OME-Zarr label images (NGFF 0.4 / 0.5), their pyramid, probabilities and resume
record, and labels written into an existing image.
"""
