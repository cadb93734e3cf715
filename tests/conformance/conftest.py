"""The default run keeps a cheap selection of the conformance matrix; the rest carries the
``conformance_full`` marker and runs with ``TLC_CONFORMANCE=full`` (or any explicit ``-m``)."""
import os


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance_full: the full conformance matrix (TLC_CONFORMANCE=full)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TLC_CONFORMANCE") == "full" or config.option.markexpr:
        return
    deselected = [i for i in items if i.get_closest_marker("conformance_full")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in items if not i.get_closest_marker("conformance_full")]
