"""Writes the Keras weight files the conversion tests read, in a process of its own.

    python tests/support/make_keras_files.py keras3 DIR   # Keras 3 files (.keras, bad models)
    python tests/support/make_keras_files.py legacy DIR   # Keras 2 files written by tf_keras
    python tests/support/make_keras_files.py informative DIR  # reads tests/support/labelled_set

Beside each good file it saves `<name>.expected.npy`: the source model's output on the
reference inputs, so a test can tell trained weights from a random initialisation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

MODE, OUT = sys.argv[1], Path(sys.argv[2])
if MODE == "legacy":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras as keras
else:
    import keras

from convert.keras_job import build_architecture  # noqa: E402
from convert.presets import get_preset  # noqa: E402
from convert.reference import preprocess, random_images  # noqa: E402

SPECS = {m.name: m for m in get_preset("tiny").members}
OUT.mkdir(parents=True, exist_ok=True)


def perturb(model, seed: int) -> None:
    """Deterministic 'trained' weights, far from any random initialisation."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()]
    )


def expected(model, name: str, size) -> None:
    x = preprocess(random_images(3, *size, seed=7), SPECS[name].preprocess)
    np.save(OUT / f"{name}.expected.npy", np.asarray(model(x, training=False)))


if MODE == "informative":
    # Finding k's probability rises with the brightness of its cell minus its mirror cell
    # (see tests/support/labelled_set.py): informative by construction, no training needed. The
    # distractor member reads the cell that brightens at random for all five findings.
    from tests.support.labelled_set import CELLS, DISTRACTOR, GRID

    for name, cells in (("densenet121", CELLS), ("xception", [DISTRACTOR] * 5)):
        spec = SPECS[name]
        h, w = spec.input_size
        gain = 20.0 * spec.preprocess.std[0] / 255.0  # the same evidence on either input scale
        inp = keras.Input((h, w, 3))
        x = keras.layers.AveragePooling2D((h // GRID, w // GRID))(inp)
        x = keras.layers.Flatten()(x)  # index (row * GRID + column) * 3 + channel
        dense = keras.layers.Dense(5, activation="sigmoid")
        model = keras.Model(inp, dense(x))
        kernel = np.zeros((GRID * GRID * 3, 5), np.float32)
        for k, (r, c) in enumerate(cells):
            kernel[(r * GRID + c) * 3, k] = gain
            kernel[(r * GRID + GRID - 1 - c) * 3, k] = -gain
        dense.set_weights([kernel, np.full(5, -1.6, np.float32)])
        model.save(OUT / f"{name}.keras")
elif MODE == "keras3":
    # A full model with a head unlike the default one.
    spec = SPECS["xception"]
    inp = keras.Input((*spec.input_size, 3))
    x = keras.layers.Conv2D(6, 3, strides=4, activation="relu")(inp)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dense(12, activation="relu")(x)
    out = keras.layers.Dense(5, activation="sigmoid")(x)
    model = keras.Model(inp, out)
    perturb(model, 1)
    model.save(OUT / "xception.keras")
    expected(model, "xception", spec.input_size)

    bad = OUT / "bad"
    for case in ("outputs", "inputs", "logits"):
        (bad / case).mkdir(parents=True, exist_ok=True)
    inp = keras.Input((*spec.input_size, 3))
    g = keras.layers.GlobalAveragePooling2D()(inp)
    keras.Model(inp, keras.layers.Dense(3, activation="sigmoid")(g)).save(
        bad / "outputs" / "xception.keras"
    )
    inp2 = keras.Input((*spec.input_size, 3))
    g2 = keras.layers.GlobalAveragePooling2D()(inp2)
    merged = keras.layers.Concatenate()([g, g2])
    keras.Model([inp, inp2], keras.layers.Dense(5, activation="sigmoid")(merged)).save(
        bad / "inputs" / "xception.keras"
    )
    big = keras.layers.Dense(5, kernel_initializer=keras.initializers.Constant(100.0))(g)
    keras.Model(inp, big).save(bad / "logits" / "xception.keras")
else:
    # The seed's three shapes of Keras 2 files: full .h5, JSON + weights, weights only.
    for name, seed in (("densenet121", 2), ("densenet169", 3), ("densenet201", 4)):
        spec = SPECS[name]
        model = build_architecture(keras, spec)
        perturb(model, seed)
        expected(model, name, spec.input_size)
        if name == "densenet121":
            model.save(OUT / "densenet121.h5")
        elif name == "densenet169":
            (OUT / "DenseNet169.json").write_text(model.to_json())
            model.save_weights(OUT / "DenseNet169_weights.h5")
        else:
            model.save_weights(OUT / "densenet-201.h5")
