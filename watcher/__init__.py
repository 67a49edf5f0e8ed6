"""imgwatch: keeps a vector index of image folders in step with the files, for reverse image search."""

__version__ = "0.1.0"
