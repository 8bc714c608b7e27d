"""Servers that do not play fair, run for real against the unchanged split client, and how well they do.

* :mod:`nopeek_tf.adversary.server`: the attacking split server (``fsha``, ``substitute``,
  ``label_inference``), a :class:`~nopeek_tf.split_learning.server_state.ServerState` with the attack's changes.
* :mod:`nopeek_tf.adversary.scoring`: scores what it captured against the clients' own training images
  (SSIM and its excess over the label-only floor, steps to success; label-inference accuracy and AUC).

Above split learning in the layers (it builds on the honest server); docs/threat_model.md. Imports TensorFlow.
"""
