"""Transitional alias: the MindSpore runner lives in :mod:`harness.runners.mindspore_runner`."""
from harness.runners.mindspore_runner import *  # noqa: F401,F403
from harness.runners.mindspore_runner import MindSporeRunner, configure_onednn_isa, detect_cpu_isa  # noqa: F401
