"""Datasets: the built-in digits set (``densekd.data.digits``) and loaders."""
