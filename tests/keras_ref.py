"""Keras reference of the organisers' NIMA (titu1994/neural-image-assessment), for the tests.

Keras 3 on the JAX backend (a test dependency; there is no TensorFlow here). The model is built
exactly as titu1994's scripts build it::

    base_model = MobileNet((224, 224, 3), alpha=1, include_top=False, pooling='avg', weights=None)
    x = Dropout(0.75)(base_model.output)
    x = Dense(10, activation='softmax')(x)
    model = Model(base_model.input, x)

so its layers are flat (conv1, conv1_bn, conv_dw_1, ..., dense). Input: ``x/127.5 - 1``.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # must precede the first keras import

import keras  # noqa: E402
import numpy as np  # noqa: E402


def build_nima_keras(input_hw=(224, 224)) -> keras.Model:
    base = keras.applications.MobileNet(input_shape=(*input_hw, 3), alpha=1.0,
                                        include_top=False, pooling="avg", weights=None)
    x = keras.layers.Dropout(0.75)(base.output)
    x = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(base.input, x)


def randomize(model: keras.Model, seed: int = 0, dense_std: float = 0.03) -> None:
    """Random weights everywhere, including BatchNorm gamma/beta and moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            shape = tuple(w.shape)
            kind = w.path.split("/")[-1]
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                a = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), shape)
            elif kind == "kernel" and len(shape) == 4:
                a = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
            elif kind == "kernel":
                a = rng.normal(0.0, dense_std, shape)
            elif kind == "gamma":  # >= 1 keeps the features input-dependent after 27 BNs
                a = rng.uniform(1.0, 1.4, shape)
            elif kind in ("beta", "bias"):
                a = rng.normal(0.0, 0.05, shape)
            elif kind == "moving_mean":
                a = rng.normal(0.0, 0.1, shape)
            elif kind == "moving_variance":
                a = rng.uniform(0.5, 1.5, shape)
            else:
                raise ValueError(f"unexpected Keras weight {w.path}")
            values.append(a.astype(np.float32))
        if values:
            layer.set_weights(values)


def nima_probs(model: keras.Model, x01: np.ndarray) -> np.ndarray:
    """``x01: [B, 224, 224, 3]`` in [0, 1] -> ``[B, 10]``, preprocessing as titu1994 does it."""
    return nima_features_and_probs(model, x01)[1]


def nima_features_and_probs(model: keras.Model, x01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pooled MobileNet features [B, 1024], probabilities [B, 10])`` in one Keras forward."""
    import jax

    both = keras.Model(model.input, [model.get_layer(index=-3).output, model.output])
    x = (x01 * 255.0) / 127.5 - 1.0
    # Keras' own ops broadcast implicitly; the suite's strict rank promotion is for ppjax code.
    with jax.numpy_rank_promotion("allow"):
        feats, probs = both(x.astype(np.float32), training=False)
    return np.asarray(feats), np.asarray(probs)


def save_weights_only_legacy_h5(model: keras.Model, path) -> None:
    """The layout of ``model.save_weights('x.h5')`` in Keras 2 (titu1994's release files)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
