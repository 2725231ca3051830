"""Helpers shared by the test modules (importable as ``support`` because pytest puts the folder of
the root ``conftest.py`` on ``sys.path``). Fixtures live in the conftest files; plain functions and
constants that several modules use live here, so no test module imports another."""
