"""Reading camera recordings (TIFF stacks and folders) and preprocessing them for inference."""
