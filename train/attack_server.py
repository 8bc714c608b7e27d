r"""A split server that attacks its clients: it speaks the protocol to the unchanged split client.

For measuring what an active server gets (docs/threat_model.md), never for serving anyone:

  python -m train.attack_server --attack=fsha --port=50071 --dataset=fashion_mnist --defence=plain \
      --cut=conv2 --model_dir=runs/fsha_server
  python -m train.split_client --server=localhost:50071 --dataset=fashion_mnist --defence=plain --cut=conv2 \
      --num_shards=6 --model_dir=runs/fsha_client

--attack=fsha answers every step with a feature-space hijacking gradient (Pasquini et al., CCS 2021);
substitute hands over an encoder it trained on public images instead of the clients' half; label_inference
(--layout=u_shaped) keeps the gradients a U-shaped client returns. It takes train.split_server's flags and
writes, besides the honest server's files, attack_capture.npz (what it reconstructed or kept of every
training message) and attack.json. Scoring that against the client's own images:
python -m train.attack_benchmark, or nopeek_tf.adversary.scoring.score.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from nopeek_tf import config as config_lib
from nopeek_tf import runtime
from nopeek_tf.adversary.settings import AttackSettings

from . import split_server

FLAGS = flags.FLAGS


def define_flags() -> None:
    """train.split_server's flags and the attack's own."""
    split_server.define_flags()
    config_lib.define_flags(AttackSettings)
    FLAGS.set_default("model_dir", "runs/attack_server")


def attacking_state():
    """The attack's state machine, from the parsed flags (ConfigError naming a bad one)."""
    from nopeek_tf.adversary.server import state_factory

    attack = config_lib.from_flags(AttackSettings)
    attack.validate()
    return state_factory(attack)


def main(argv):
    split_server.main(argv, attacking_state)


def run() -> None:
    """``python -m train.attack_server``."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
