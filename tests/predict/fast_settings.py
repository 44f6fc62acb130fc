"""Network and training settings small enough for the test suite (a module, not conftest, so that test
files can import it without clashing with tests/conftest.py)."""

FAST = dict(max_epochs=2, patience=2, hidden=16, embedding_dim=4, graph_dim=8, progress=False)
