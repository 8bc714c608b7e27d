r"""Cuts a trained *undefended* model dir of your own network again at another layer, without retraining.

Undefended (alpha 0, no bottleneck, no noise, no attacker-aware training), the
network trains the same wherever it is cut: the MobileNetV2 frontier's
undefended runs at block_2_add and block_5_add, trained separately, have the
same test loss to every digit. This writes a model dir for another cut from
one of them (the weights copied layer by layer; checked: the new split model's
logits equal the old one's), so the frontier's undefended rows need one
training.

  python docs/frontiers/recut_undefended.py runs/mnv2/block_5_add_plain expanded_conv_project_BN \
      runs/mnv2/expanded_conv_project_BN_plain
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from nopeek_tf import model_dir as model_dir_lib  # noqa: E402
from nopeek_tf.config import TrainConfig  # noqa: E402
from nopeek_tf.core import split  # noqa: E402
from nopeek_tf.core.dcor import mean_batch_dcor  # noqa: E402
from nopeek_tf.training import data, networks  # noqa: E402
from nopeek_tf.training.runner import sent_size  # noqa: E402


def main(source: str, cut: str, target: str) -> None:
    halves, metrics = model_dir_lib.load(source)
    config = TrainConfig.from_json(metrics)
    undefended = dataclasses.replace(config, alpha=0.0, bottleneck=0, noise="none", noise_scale=0.0,
                                     adversary_weight=0.0)
    if config != undefended or not config.user_model:
        sys.exit(f"error: {source} is not an undefended run of your own network")
    network = networks.load_network(config, metrics["input_shape"], metrics["num_classes"])
    trained = {layer.name: layer for half in (halves.client, halves.server) for layer in half.layers}
    for layer in network.layers:
        if layer.weights:
            layer.set_weights(trained[layer.name].get_weights())
    recut = split.split_model(network, cut, alpha=0.0)
    images, _ = data.to_arrays(data.load_as_trained(metrics).test)
    np.testing.assert_allclose(recut.full.predict(images[:256], verbose=0),
                               halves.full.predict(images[:256], verbose=0), atol=1e-4)
    new_config = dataclasses.replace(config, cut=cut)
    test_dcor, dcor_batch_size = mean_batch_dcor(images, recut.sent_activations(images), config.dcor_batch_size)
    model_dir_lib.prepare(target, new_config)
    model_dir_lib.save_model(target, recut.full, {
        **metrics, **new_config.to_json(), **sent_size(recut), "activation_shape": list(recut.activation_shape),
        "test_dcor": test_dcor, "dcor_batch_size": dcor_batch_size, "recut_from": source, "epochs_run_now": 0})
    print(f"wrote {target}: {cut} -> activations {recut.activation_shape}, test accuracy {metrics['test_accuracy']}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python docs/frontiers/recut_undefended.py SOURCE_MODEL_DIR CUT TARGET_MODEL_DIR")
    main(*sys.argv[1:])
