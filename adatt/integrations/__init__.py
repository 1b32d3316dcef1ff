"""Optional integrations with other libraries; each submodule imports its library on use.

* :mod:`adatt.integrations.torchrec` -- categorical features in TorchRec embedding
  tables (sharded over processes), any registered model on top
  (``pip install adatt[torchrec]``).
"""
