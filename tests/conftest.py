import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# the checkout under test provides the built-in passes and example models (a worktree its own,
# whatever an editable install elsewhere points at)
from graph_convert.plugins import load_checkout_package  # noqa: E402

load_checkout_package("graph_convert_passes", "passes")
load_checkout_package("graph_convert_models", "models")
