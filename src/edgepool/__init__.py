"""edgepool: pool heterogeneous edge devices for deep learning."""
__version__ = "0.1.0"
