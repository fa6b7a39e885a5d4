"""Converters from the judges' published checkpoints to ppjax (Flax + orbax).

This package (and the tests) are the only places that import torch or h5py; install them with
``pip install -e ".[convert]"``.
"""
