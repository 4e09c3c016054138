"""slideseg: exact, seamless U-Net segmentation of whole-slide images, streamed to OME-Zarr."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slideseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
