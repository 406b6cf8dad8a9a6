"""Adding a method = its file + one row in cases.py: a registered method without a row would skip every shared
check (param counts, identity init, merge, save/load, mixed batches) without anyone noticing."""
from tuneforge.registry import METHODS

from .cases import CASES


def test_every_registered_method_has_a_row_in_the_case_table():
    # fitted methods put no adapter into the model, so the shared checks do not apply (test_feature_based.py)
    trained = {name for name, cls in METHODS.items() if not cls.fitted}
    rows = {case.method for case in CASES}
    assert trained - rows == set(), f"methods without a row in tests/methods/cases.py: {sorted(trained - rows)}"
    assert rows - set(METHODS.names()) == set(), f"rows naming no registered method: {sorted(rows - set(METHODS.names()))}"
