"""fer-ray: facial-expression recognition trained with Ray Train and applied with Ray Data."""

__version__ = "0.1.0"
