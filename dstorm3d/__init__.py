"""dstorm3d: dense 3D single-molecule localization with engineered PSFs (DeepSTORM3D) on PyTorch Lightning."""

__version__ = "0.1.0"
