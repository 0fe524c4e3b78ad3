"""Transitional alias: the runners live in :mod:`harness.runners`."""
from harness.runners import (FRAMEWORK_ALIASES, RUNNERS, BackendError, Runner, RunnerError,  # noqa: F401
                             canonical_framework, get_runner_class, make_runner)
from harness.runners.mmaction2_runner import MMAction2Runner  # noqa: F401
from harness.runners.torch_runner import TorchRunner  # noqa: F401
