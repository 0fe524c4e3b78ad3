"""The MindSpore implementation (imports neither PyTorch nor ``harness``)."""
