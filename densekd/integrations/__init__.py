"""Integrations of densekd into other training frameworks (each an optional extra).

- :mod:`densekd.integrations.ultralytics` — distil Ultralytics YOLO detectors with any densekd method inside
  Ultralytics' own trainer (``pip install "densekd[ultralytics]"``).

Nothing here is imported by ``import densekd``; import the submodule you need.
"""
