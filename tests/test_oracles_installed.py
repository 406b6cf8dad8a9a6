"""Every test oracle is installed (a missing one fails here with the way to install it, and fails the tests that
use it, instead of skipping them)."""
import importlib.util

import pytest

from .oracles import ORACLES, missing_message, require


@pytest.mark.parametrize("module", sorted(ORACLES))
def test_oracle_is_installed(module):
    assert importlib.util.find_spec(module) is not None, missing_message(module)


def test_a_missing_oracle_fails_with_the_set_up_command():
    with pytest.raises(pytest.fail.Exception, match=r"'no-such-oracle' is not installed: run `make setup`"):
        ORACLES["no_such_oracle"] = "no-such-oracle"
        try:
            require("no_such_oracle")
        finally:
            del ORACLES["no_such_oracle"]
