"""HOMEPOT: fleet management and analytics for point-of-sale terminals."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("homepot")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
