"""Split training over the network: the clients keep their images, the server trains the top half.

``protocol`` (no TensorFlow): the settings both sides agree on and their flags, the checks both sides make,
tensors on the wire, the gRPC methods of ``split_training.proto``. ``halves``: what each side runs of the
server half, and the server half's steps. ``server_state``: the server's state machine under one lock (the
schedules, sequential and splitfed, faults, averages, checkpoints). ``server``: the gRPC service around it.
``client``: a client's half, its data and NoPeek's dCor, its step over the network.
The programs: ``python -m train.split_server`` and ``python -m train.split_client``.
"""
