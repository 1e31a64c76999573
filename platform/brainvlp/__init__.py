"""brainvlp: vision-language pretraining on 3D brain MRI and radiology reports, on Ray."""

__version__ = "0.1.0"
