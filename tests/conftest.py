import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# the checkout under test provides the built-in passes and example models (a worktree its own,
# whatever an editable install elsewhere points at)
from graph_convert.plugins import load_checkout_package  # noqa: E402

load_checkout_package("graph_convert_passes", "passes")
load_checkout_package("graph_convert_models", "models")


# -- the quick tier: `python -m pytest -q -m quick` ------------------------------------------------
# The core that most changes touch, in under 3 minutes on 2 cores: the IR and permutation algebra,
# the pass framework and plugins, the options, the command line's bad-input paths and the README's
# own examples. CI (.ci/run) runs every test, these included. A module listed here is quick as a
# whole; elsewhere a test opts in with @pytest.mark.quick.
QUICK_MODULES = {"test_ir.py", "test_perm.py", "test_pass_manager.py", "test_plugins.py", "test_cli.py", "test_architecture.py",
                 "test_fold_constants.py",
                 "test_cancel_reshape_pair.py", "test_merge_slices.py", "test_drop_nan_guard.py"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.name in QUICK_MODULES:
            item.add_marker(pytest.mark.quick)
