"""Flax ports of the judges. One file per model family; module names mirror the original
framework's module paths exactly (``layer1/0/conv1``), so converters are a plain name map."""
