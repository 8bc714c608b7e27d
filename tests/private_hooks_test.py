"""Canary: the private hooks of Keras and LiteRT that nopeek-tf overrides still exist.

requirements.txt pins Keras and ai-edge-litert below the next minor release
because of these; a new version that removes one fails here, with the hook's
name, instead of silently changing behaviour.
"""

import keras
import pytest
from ai_edge_litert.interpreter import Interpreter

from nopeek_tf.core import models

HOOKS = [
    (keras.layers.Layer, "_get_own_losses", "models.NoPeekLayer: counts each replica's own dCor loss"),
    (keras.layers.Layer, "_clear_losses", "models.NoPeekLayer: forgets the losses of its own replica thread"),
    (Interpreter, "_get_ops_details", "litert.LiteRTModel.op_names: export refuses Flex ops"),
]


@pytest.mark.parametrize("owner, hook, used_by", HOOKS, ids=[hook for _, hook, _ in HOOKS])
def test_private_hook_exists(owner, hook, used_by):
    assert callable(getattr(owner, hook, None)), (
        f"{owner.__module__}.{owner.__name__}.{hook} is gone (installed: keras {keras.version()}); "
        f"it is overridden or called by {used_by}. Adapt that code before raising the pin in requirements.txt.")


def test_the_overrides_are_the_ones_named():
    assert "_get_own_losses" in vars(models.NoPeekLayer) and "_clear_losses" in vars(models.NoPeekLayer)
