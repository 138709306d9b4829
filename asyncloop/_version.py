"""The package version (private: read it as ``asyncloop.__version__``)."""

__version__ = "0.1.0"
