"""The PyTorch implementation (imports neither MindSpore nor ``harness``)."""
