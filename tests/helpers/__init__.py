"""Test helpers shared by the suites (fixtures stay in the conftest files)."""
