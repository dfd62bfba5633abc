"""convkit.bench: the layer suite, its benchmark runner and the correctness sweep.

`python -m convkit bench` times every registered CPU algorithm, the NumPy reference and
(optionally) PyTorch on the layers of suite.json; `python -m convkit check` compares every
registered implementation with the reference on random small shapes. See cli.py.
"""
