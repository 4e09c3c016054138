"""Reading slides: file formats and their metadata, axes and channels, pyramid levels resampled
to the model's pixel size, tissue detection on a thumbnail.
"""
