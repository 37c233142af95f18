"""autodip-watch: AUTO-DIP denoising of fluorescence microscopy images, as a daemon."""

__version__ = "0.1.0"
