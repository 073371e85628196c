"""mmdeploy: CLIP and captioning checkpoints from PyTorch to fast, checked edge artifacts."""

__version__ = "0.1.0"
