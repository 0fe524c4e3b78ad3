"""Two implementations of one network (``torch``, ``mindspore``) and the spec they share.

Never put this folder itself on ``sys.path``: its ``torch`` and ``mindspore`` packages
would shadow the libraries. Import ``frameworks.torch.model`` from the repository root.
"""
