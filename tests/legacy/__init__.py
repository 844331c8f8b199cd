# A package, so that this directory's conftest is imported as ``legacy.conftest`` and never
# replaces ``tests/conftest.py`` as the module ``conftest`` (which test modules import helpers from).
