"""adatt: AdaTT (KDD'23) and its multi-task baselines for recommender systems.

Importing the package is cheap: submodules are imported on use.
"""

__version__ = "0.1.0"
