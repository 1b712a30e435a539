"""The examples in the docstrings are run: an example that no longer holds is a failing
test, not documentation that misleads.  (Examples that need files a reader would have,
``load_audio("song.m4a")``, are marked ``+SKIP``.)"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

#: The card's folders are installed as subpackages from their own directories
#: (``package-dir``), so each is walked from its own path.
PACKAGES = ("earmark", "earmark.fingerprint", "earmark.index", "earmark.bench")
MODULES = sorted({name for pkg in PACKAGES
                  for _, name, _ in pkgutil.walk_packages(importlib.import_module(pkg).__path__,
                                                          pkg + ".")})


def test_every_subpackage_is_walked():
    for pkg in PACKAGES[1:]:
        assert any(m.startswith(pkg + ".") for m in MODULES), pkg


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
