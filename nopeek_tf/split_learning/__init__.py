"""Split training over the network: the clients keep their images, the server trains the top half.

``protocol`` (no TensorFlow): the settings both sides agree on, tensors on the wire, the gRPC methods of
``split_training.proto``. ``server``: the server half, the schedules (sequential, splitfed), faults,
checkpoints. ``client``: a client's half, its data and NoPeek's dCor, its step over the network.
The programs: ``python -m train.split_server`` and ``python -m train.split_client``.
"""
