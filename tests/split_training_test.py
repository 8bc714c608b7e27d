"""Split training over gRPC (train.split_server, train.split_client): the wire, the protocol's exactness
against central training, both schedules, both layouts, what the server sees, faults, bad messages, TLS,
and the model dirs each side writes (export, serving, leakage)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nopeek_tf.split_learning import protocol
from nopeek_tf.split_learning import split_training_pb2 as pb
from tests.conftest import REPO_ROOT

# ORL at a small batch and few epochs: each program starts in seconds and an epoch takes about one.
ORL = ["--dataset=orl_faces", "--defence=plain", "--alpha=0", "--batch_size=16", "--seed=0"]


# --- The wire (no TensorFlow) ----------------------------------------------------------------------

def test_wire_encodings_round_trip_in_their_sizes():
    values = np.random.default_rng(0).normal(size=(4, 7, 3)).astype(np.float32)
    for wire, itemsize, tolerance in (("float32", 4, 0.0), ("float16", 2, 2e-3), ("int8", 1, 0.02)):
        tensor = protocol.encode(values, wire)
        assert len(tensor.data) == values.size * itemsize
        decoded = protocol.decode(tensor, "activations", wire, (7, 3))
        assert decoded.dtype == np.float32 and decoded.shape == values.shape
        assert np.max(np.abs(decoded - values)) <= tolerance * np.max(np.abs(values))
    assert np.array_equal(protocol.decode(protocol.encode(np.zeros((2, 3)), "int8"), "x"), np.zeros((2, 3)))


def test_decode_names_what_is_wrong():
    good = protocol.encode(np.ones((2, 3), np.float32), "float32")
    with pytest.raises(protocol.ProtocolError, match="activations are float16; this run's wire is float32"):
        protocol.decode(protocol.encode(np.ones((2, 3)), "float16"), "activations", "float32")
    with pytest.raises(protocol.ProtocolError, match=r"expected \[batch, 4\]"):
        protocol.decode(good, "activations", "float32", (4,))
    short = pb.Tensor(shape=[2, 3], wire=pb.FLOAT32, data=good.data[:-4])
    with pytest.raises(protocol.ProtocolError, match="20 bytes do not hold shape"):
        protocol.decode(short, "activations")
    with pytest.raises(protocol.ProtocolError, match="NaN or Inf"):
        protocol.decode(protocol.encode(np.array([[1.0, np.nan]]), "float32"), "activations")
    with pytest.raises(protocol.ProtocolError, match="int8 scale"):
        protocol.decode(pb.Tensor(shape=[1], wire=pb.INT8, data=b"\x01", scale=0.0), "gradient")


def test_disagreements_name_each_flag():
    from nopeek_tf.config import TrainConfig

    server = protocol.agreement_json(TrainConfig(cut="dense"), protocol.SplitSettings())
    client = protocol.agreement_json(TrainConfig(cut="conv2", data_dir="/mine"), protocol.SplitSettings(wire="int8"))
    assert protocol.disagreements(client, server) == ["--cut: client 'conv2', server 'dense'",
                                                      "--wire: client 'int8', server 'float32'"]
    assert protocol.disagreements(server, server) == []


# --- The programs ---------------------------------------------------------------------------------

class Program:
    """A real train.split_server or train.split_client process, its output in a file."""

    def __init__(self, module: str, args, log_path):
        self.log_path = str(log_path)
        self.args = [sys.executable, "-m", module, *args]
        self.start()

    def start(self):
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        text=True)

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not re.search(pattern, self.output()):
            if self.process.poll() is not None and not re.search(pattern, self.output()):
                raise AssertionError(f"{self.args[2]} ended before {pattern!r}:\n{self.output()[-3000:]}")
            if time.time() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float = 300) -> str:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"{self.args[2]} did not finish:\n{self.output()[-3000:]}") from None
        assert code == 0, f"{self.args[2]} exited {code}:\n{self.output()[-3000:]}"
        return self.output()


def _port() -> int:
    from nopeek_tf.training.distribute import free_ports

    return free_ports(1)[0]


def _run(tmp_path, flags, clients=1, server_flags=(), client_flags=(), name="run"):
    """A split server and ``clients`` clients (shards of the data) to the end; returns (server dir, client dirs)."""
    port = _port()
    server_dir, client_dirs = tmp_path / f"{name}_server", [tmp_path / f"{name}_client{i}" for i in range(clients)]
    server = Program("train.split_server", [*flags, f"--port={port}", f"--num_clients={clients}",
                                            f"--model_dir={server_dir}", *server_flags],
                     tmp_path / f"{name}_server.log")
    programs = [Program("train.split_client", [*flags, f"--server=localhost:{port}", f"--shard={i}",
                                               f"--num_shards={clients}", f"--model_dir={client_dirs[i]}",
                                               *client_flags], tmp_path / f"{name}_client{i}.log")
                for i in range(clients)]
    for program in [*programs, server]:
        program.finish()
    return server_dir, client_dirs


def _metrics(model_dir) -> dict:
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return json.load(f)


def _max_difference(first, second) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first.get_weights(), second.get_weights()))


@pytest.mark.slow
@pytest.mark.parametrize("alpha,batch_size,epochs", [(1.0, 280, 1), (0.0, 32, 2)],
                         ids=["dcor-1-step", "no-dcor-18-steps"])
def test_one_client_sequential_equals_central_training(tmp_path, alpha, batch_size, epochs):
    """Both halves' weights after split training equal central train.train's on the same data order, seed and
    optimizer, within 1e-5. With dCor: one step of 280 ORL faces (the dCor gradient computed on the client, the
    task's from the server). Without: 18 steps over two epochs, the client half passing through the server between
    them (bit for bit). With dCor, later steps drift apart at the float-rounding level that central training
    shows against itself with its two loss terms summed in the other order (2e-5 after three steps): Adam divides
    near-zero gradients by their own size (docs/split_training.md, "Exactness")."""
    import keras

    from nopeek_tf.config import TrainConfig
    from nopeek_tf.training import networks

    flags = dict(dataset="orl_faces", defence="plain", alpha=alpha, epochs=epochs, batch_size=batch_size, seed=3,
                 alpha_warmup_epochs=0, alpha_ramp_epochs=0)  # dCor from the first step
    args = [f"--{key}={value}" for key, value in flags.items()]
    # Central training as a program too: both sides then run with the same TensorFlow settings.
    Program("train.train", [*args, f"--model_dir={tmp_path / 'central'}"], tmp_path / "central.log").finish()
    # The hijack probes (guard.py) train the server on changed labels: off, for the same updates as central.
    server_dir, (client_dir,) = _run(tmp_path, args, client_flags=["--hijack_check_every=0"])
    central = keras.models.load_model(tmp_path / "central" / "model.keras", compile=False)
    client = keras.models.load_model(client_dir / "client.keras", compile=False)
    server = keras.models.load_model(server_dir / "server.keras", compile=False)
    assert _max_difference(central.get_layer("client"), client.get_layer("client")) < 1e-5
    assert _max_difference(central.get_layer("server"), server) < 1e-5
    keras.utils.set_random_seed(3)  # the weights both started from: training moved them far beyond 1e-5
    start = networks.build_split(networks.with_arch(TrainConfig(**flags), (112, 92, 1)), (112, 92, 1), 40)
    assert _max_difference(start.client, client.get_layer("client")) > 1e-4
    assert _max_difference(start.server, server) > 1e-4
    assert _metrics(client_dir)["test_accuracy"] == pytest.approx(_metrics(tmp_path / "central")["test_accuracy"],
                                                                  abs=1 / 120)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["sequential", "splitfed"])
def test_two_clients_train_well_above_chance(tmp_path, schedule):
    server_dir, client_dirs = _run(tmp_path, [*ORL, "--epochs=8"], clients=2, server_flags=[f"--schedule={schedule}"])
    server = _metrics(server_dir)
    assert [sorted(epoch["clients_trained"]) for epoch in server["epochs_history"]] == [[0, 1]] * 8
    accuracies = [_metrics(folder)["test_accuracy"] for folder in client_dirs]
    assert min(accuracies) > 0.2, accuracies  # 40 classes: chance is 0.025 (splitfed varies with arrival order)
    assert accuracies[0] == accuracies[1]  # both end with the same client half (passed on, or averaged)
    for folder in client_dirs:
        metrics = _metrics(folder)
        assert metrics["train_examples"] == 140 and metrics["split_side"] == "client"
        # float32 activations up and gradients down, 140 images in 9 steps, and a little framing:
        assert metrics["bytes_per_step"] == pytest.approx(2 * 140 / 9 * 28 * 23 * 32 * 4, rel=0.01)
        assert metrics["bytes_per_epoch"] > 9 * metrics["bytes_per_step"] + metrics["client_half_bytes"]
        assert metrics["fedavg_bytes_per_round"] > metrics["client_half_bytes"]


class Recorder:
    """A gRPC server interceptor that keeps every request message the split server receives."""

    def __init__(self):
        import grpc

        self.requests: list[tuple[str, object]] = []
        recorded = self.requests

        class Hook(grpc.ServerInterceptor):
            def intercept_service(self, continuation, details):
                handler = continuation(details)
                inner = handler.unary_unary

                def unary(request, context):
                    recorded.append((details.method.rsplit("/", 1)[-1], request))
                    return inner(request, context)
                return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                           handler.response_serializer)

        self.interceptor = Hook()


def _serve_in_thread(tmp_path, flags: dict, layout="plain", wire="float32", num_clients=1, **kwargs):
    """The split server in this process (a thread); returns (thread, port, result dict)."""
    from nopeek_tf.config import TrainConfig
    from nopeek_tf.split_learning import server

    ready, result = threading.Event(), {}

    def run():
        try:
            result["metrics"] = server.serve(
                TrainConfig(**flags, verbose=0), protocol.SplitSettings(layout=layout, wire=wire),
                protocol.ServerSettings(port=0, num_clients=num_clients), str(tmp_path / f"server_{layout}"),
                log=lambda line: None, ready=lambda port: (result.update(port=port), ready.set()), **kwargs)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            result["error"] = error
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(120) and "error" not in result, result.get("error")
    return thread, result["port"], result


@pytest.mark.slow
def test_server_never_receives_an_image_and_u_shaped_no_label(tmp_path):
    from nopeek_tf.training import data

    images, _ = data.to_arrays(data.load("orl_faces").train)
    flags = dict(dataset="orl_faces", defence="plain", alpha=0.0, epochs=1, batch_size=70)
    for layout in ("plain", "u_shaped"):
        recorder = Recorder()
        thread, port, _ = _serve_in_thread(tmp_path, flags, layout, interceptors=[recorder.interceptor])
        Program("train.split_client", [*ORL[:3], "--epochs=1", "--batch_size=70", f"--layout={layout}",
                                       f"--server=localhost:{port}", f"--model_dir={tmp_path / layout}"],
                tmp_path / f"{layout}.log").finish()
        thread.join(60)
        methods = {method for method, _ in recorder.requests}
        tensors = []
        for _, request in recorder.requests:
            for field, value in request.ListFields():
                values = value if isinstance(value, (list, tuple)) or hasattr(value, "extend") else [value]
                tensors += [item for item in values if isinstance(item, pb.Tensor)]
        assert tensors and not any(tuple(t.shape[1:]) == images.shape[1:] for t in tensors)
        every_byte = b"".join(request.SerializeToString() for _, request in recorder.requests)
        for image in images[:20]:  # no image as float32 (what the client reads) or as pixels
            assert image.astype(np.float32).tobytes()[:512] not in every_byte
            assert np.round(image * 255).astype(np.uint8).tobytes()[:256] not in every_byte
        labelled = [request for method, request in recorder.requests if method == "Step"]
        if layout == "plain":
            assert methods >= {"Join", "AwaitTurn", "Step", "EndEpoch", "Evaluate", "Leave"}
            probes = _metrics(tmp_path / layout)["hijack_probes"]  # each resends a batch of 70, labels changed
            assert probes >= 1 and sum(len(request.labels) for request in labelled) == 280 + 70 * probes
        else:
            assert methods >= {"Forward", "Backward"} and not labelled
            assert not any(request.DESCRIPTOR.fields_by_name.get("labels") for _, request in recorder.requests)
        assert _metrics(tmp_path / layout)["layout"] == layout


def _code(call, code_name: str, message: str):
    import grpc

    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code().name == code_name, error.value.details()
    assert re.search(message, error.value.details()), error.value.details()


@pytest.mark.slow
def test_bad_messages_are_refused_and_nothing_is_applied(tmp_path):
    import dataclasses

    import grpc
    import keras

    from nopeek_tf.config import TrainConfig
    from nopeek_tf.training import networks
    from nopeek_tf.split_learning.server import settle_config

    flags = dict(dataset="orl_faces", defence="plain", alpha=0.0, epochs=1, batch_size=4, cut="conv4")
    thread, port, result = _serve_in_thread(tmp_path, flags)
    config, info = settle_config(TrainConfig(**flags))
    stub = protocol.Stub(grpc.insecure_channel(f"localhost:{port}"))
    agreement = protocol.agreement_json(config, protocol.SplitSettings())
    wrong = protocol.agreement_json(dataclasses.replace(config, cut="conv2"), protocol.SplitSettings())
    _code(lambda: stub.Join(pb.JoinRequest(client_id=0, config_json=wrong)), "FAILED_PRECONDITION",
          "disagree: --cut: client 'conv2', server 'conv4'")
    _code(lambda: stub.Join(pb.JoinRequest(client_id=3, config_json=agreement)), "INVALID_ARGUMENT",
          "unknown client id 3")
    stub.Join(pb.JoinRequest(client_id=0, config_json=agreement, next_step=0))
    assert stub.AwaitTurn(pb.TurnRequest(client_id=0, wait_seconds=5)).go
    probe = np.random.default_rng(0).uniform(size=(4, 7, 5, 128)).astype(np.float32)

    def logits():
        return protocol.decode(stub.Evaluate(pb.EvaluateRequest(client_id=0, activations=protocol.encode(
            probe, "float32"))).outputs, "logits")

    before = logits()
    labels = [0, 1, 2, 3]

    def step(activations, step=0, client_id=0, labels=labels):
        return lambda: stub.Step(pb.StepRequest(client_id=client_id, step=step, activations=activations,
                                                labels=labels))

    good = protocol.encode(probe, "float32")
    bad = {
        "shape": (step(protocol.encode(probe[:, :6], "float32")), "INVALID_ARGUMENT",
                  r"activations have shape \[4, 6, 5, 128\]; expected \[batch, 7, 5, 128\]"),
        "dtype": (step(protocol.encode(probe, "float16")), "INVALID_ARGUMENT", "activations are float16"),
        "size": (step(pb.Tensor(shape=good.shape, wire=pb.FLOAT32, data=good.data[:100])), "INVALID_ARGUMENT",
                 "100 bytes do not hold shape"),
        "nan": (step(protocol.encode(np.where(probe > 0.99, np.nan, probe), "float32")), "INVALID_ARGUMENT",
                "NaN or Inf"),
        "inf": (step(protocol.encode(np.where(probe > 0.99, np.inf, probe), "float32")), "INVALID_ARGUMENT",
                "NaN or Inf"),
        "labels": (step(good, labels=[0, 1]), "INVALID_ARGUMENT", "2 labels for 4 activations"),
        "label range": (step(good, labels=[0, 1, 2, 40]), "INVALID_ARGUMENT", r"labels must be 0\.\.39"),
        "unknown client": (step(good, client_id=7), "INVALID_ARGUMENT", "unknown client id 7"),
        "future step": (step(good, step=5), "INVALID_ARGUMENT", "step 5 out of order"),
    }
    for name, (call, code, message) in bad.items():
        _code(call, code, message)
        assert np.array_equal(logits(), before), f"{name}: the server half changed"
    step(good)()  # a good step is applied: the check above can fail
    assert not np.array_equal(logits(), before)
    _code(step(good, step=0), "FAILED_PRECONDITION", "stale step 0: client 0's next step is 1")
    _code(lambda: stub.EndEpoch(pb.EpochEndRequest(client_id=0, epoch=0, examples=4)), "INVALID_ARGUMENT",
          "client weights: 0 tensors")
    after_one_step = logits()
    keras.utils.set_random_seed(0)
    split = networks.build_split(config, info.image_shape, info.num_classes)
    weights = protocol.encode_weights([w.numpy() for w in split.client.weights])
    _code(lambda: stub.EndEpoch(pb.EpochEndRequest(client_id=0, epoch=4, client_weights=weights)),
          "FAILED_PRECONDITION", "stale epoch 5")
    assert np.array_equal(logits(), after_one_step)
    stub.EndEpoch(pb.EpochEndRequest(client_id=0, epoch=0, client_weights=weights, examples=4))
    assert stub.AwaitTurn(pb.TurnRequest(client_id=0, wait_seconds=5)).done
    stub.Leave(pb.LeaveRequest(client_id=0))
    thread.join(60)
    assert result["metrics"]["epochs_history"][0]["steps"] == 1  # only the good step counted


@pytest.mark.slow
@pytest.mark.parametrize("schedule,passed_over", [("sequential", "its turn passes"),
                                                  ("splitfed", "the epoch ends without it")])
def test_client_killed_mid_epoch_is_passed_over_and_rejoins(tmp_path, schedule, passed_over):
    """Two clients: client 0 killed in its second epoch; after the timeout the server goes on with client 1
    (its turn, or its half alone in the average); client 0, restarted, resumes from its checkpoint and trains
    again in a later epoch; both finish."""
    port = _port()
    flags = [*ORL[:3], "--batch_size=2", "--epochs=4"]
    server = Program("train.split_server", [*flags, f"--port={port}", "--num_clients=2", f"--schedule={schedule}",
                                            "--client_timeout_seconds=8", f"--model_dir={tmp_path / 'server'}"],
                     tmp_path / "server.log")
    clients = [Program("train.split_client", [*flags, f"--server=localhost:{port}", f"--shard={i}", "--num_shards=2",
                                              f"--model_dir={tmp_path / f'client{i}'}"], tmp_path / f"client{i}.log")
               for i in range(2)]
    server.wait_for("epoch 2: client 0's turn" if schedule == "sequential" else "epoch 1/4 finished")
    time.sleep(0.3)  # into client 0's second turn (70 steps of 2 images, about 2 s here)
    clients[0].kill()
    server.wait_for(f"client 0 silent for 8 s; {passed_over}")
    clients[0].start()
    for program in [*clients, server]:
        program.finish()
    logs = f"server:\n{server.output()[-3000:]}\nclient 0:\n{clients[0].output()[-3000:]}"
    history = _metrics(tmp_path / "server")["epochs_history"]
    assert history[0]["clients_trained"] == [0, 1], logs
    left_out = [epoch["epoch"] for epoch in history if epoch["clients_left_out"] == [0]]
    assert left_out and left_out[0] >= 2, logs  # killed in its second epoch or, on a slow machine, later
    assert history[left_out[0] - 1]["clients_trained"] == [1], logs
    resumed = re.search(r"resuming from the checkpoint after epoch (\d+)", clients[0].output())
    assert resumed and 1 <= int(resumed.group(1)) <= left_out[0] - 1, logs
    assert any(0 in epoch["clients_trained"] for epoch in history[left_out[0]:]), logs  # back in its turn
    assert _metrics(tmp_path / "client0")["test_accuracy"] == _metrics(tmp_path / "client1")["test_accuracy"]


@pytest.mark.slow
def test_server_killed_and_restarted_resumes_and_clients_reconnect(tmp_path):
    port = _port()
    flags = [*ORL, "--epochs=3"]
    server_args = [*flags, f"--port={port}", "--num_clients=2", "--schedule=splitfed",
                   f"--model_dir={tmp_path / 'server'}"]
    server = Program("train.split_server", server_args, tmp_path / "server.log")
    clients = [Program("train.split_client", [*flags, f"--server=localhost:{port}", f"--shard={i}", "--num_shards=2",
                                              f"--model_dir={tmp_path / f'client{i}'}"], tmp_path / f"client{i}.log")
               for i in range(2)]
    server.wait_for("epoch 1/3 finished")
    server.kill()
    time.sleep(1)
    server.start()
    server.wait_for("resumed after epoch 1")
    for program in [*clients, server]:
        program.finish()
    assert all("rejoining from the checkpoint" in client.output() for client in clients)
    history = _metrics(tmp_path / "server")["epochs_history"]
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]
    assert all(os.path.exists(tmp_path / f"client{i}" / "client.keras") for i in range(2))


@pytest.mark.slow
def test_mutual_tls(tmp_path, certificates):
    folder = certificates
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f'server_key: {json.dumps((folder / "server.key").read_text())}\n'
                          f'server_cert: {json.dumps((folder / "server.pem").read_text())}\n'
                          f'custom_ca: {json.dumps((folder / "ca.pem").read_text())}\n'
                          'client_verify: true\n')
    port = _port()
    flags = [*ORL[:3], "--epochs=1", "--batch_size=70"]
    server = Program("train.split_server", [*flags, f"--port={port}", f"--ssl_config_file={ssl_config}",
                                            f"--model_dir={tmp_path / 'server'}"], tmp_path / "server.log")
    server.wait_for(r"split server on port \d+ \(TLS\)")
    refused = subprocess.run([sys.executable, "-m", "train.split_client", *flags, f"--server=localhost:{port}",
                              f"--ca_file={folder / 'ca.pem'}", "--connect_retries=0",
                              f"--model_dir={tmp_path / 'no_cert'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error: cannot reach the split server")
    tls = [f"--ca_file={folder / 'ca.pem'}", f"--client_cert={folder / 'client.pem'}",
           f"--client_key={folder / 'client.key'}"]
    other_cut = subprocess.run([sys.executable, "-m", "train.split_client", *flags, "--cut=conv3", *tls,
                                f"--server=localhost:{port}", f"--model_dir={tmp_path / 'other_cut'}"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120)
    assert other_cut.returncode == 1 and other_cut.stderr.strip().splitlines()[-1] == (
        "error: the server refused Join: FAILED_PRECONDITION: client 0 and the server disagree: --cut: client "
        "'conv3', server 'conv2'")
    Program("train.split_client", [*flags, f"--server=localhost:{port}", *tls, f"--model_dir={tmp_path / 'client'}"],
            tmp_path / "client.log").finish()
    server.finish()
    assert _metrics(tmp_path / "client")["test_accuracy"] >= 0


@pytest.mark.slow
def test_each_side_exports_and_together_they_serve_the_edge_client(tmp_path):
    """The client's model dir exports the TFLite clients and manifest, the server's the SavedModel the manifest
    names; the local TF Serving server and the edge client run them unchanged; train.leakage attacks the client."""
    from edge.client import EdgeClient
    from export import export
    from nopeek_tf.config import AttackBudget, EvaluationConfig
    from nopeek_tf.experiments import evaluation
    from nopeek_tf.training import data
    from tests.local_server import LocalServer

    server_dir, (client_dir,) = _run(tmp_path, [*ORL, "--epochs=3", "--cut=conv4", "--wire=float16"])
    manifest = export.export_model(export.ExportConfig(model_dir=str(client_dir), parity_images=40, force=True),
                                   log=lambda *_: None)
    client_folder = client_dir / "export" / "client"
    assert manifest.clients["float32"].parity["max_abs_activation_diff"] < 1e-4
    # The card says what training revealed: 3 sends of each image, bounded only by the float16 wire (no noise).
    assert manifest.privacy["training_sends_per_image"] == 3
    assert manifest.privacy["training_bits_per_image"] == 3 * 16 * int(np.prod(manifest.activation_shape))
    with pytest.raises(export.ExportError, match="give --client_manifest"):
        export.export_model(export.ExportConfig(model_dir=str(server_dir)))
    export.export_model(export.ExportConfig(model_dir=str(server_dir),
                                            client_manifest=str(client_folder / "manifest.json")),
                        log=lambda *_: None)
    serving = server_dir / "export" / "serving"
    assert (serving / "models.config").exists() and (serving / manifest.model_name / "1").is_dir()
    local = LocalServer({manifest.model_name: str(serving / manifest.model_name)})
    try:
        raw = data.load("orl_faces")
        pixels, labels = [], []
        for image, label in raw.test.take(30):
            pixels.append(image.numpy())
            labels.append(int(label))
        for variant, transport in (("float32", "rest"), ("int8", "grpc")):
            edge = EdgeClient(str(client_folder / f"client_{variant}.tflite"), transport=transport,
                              server=local.rest if transport == "rest" else local.grpc)
            answers = [edge.classify(image).class_name for image in pixels]
            accuracy = np.mean([answer == manifest.class_names[label] for answer, label in zip(answers, labels)])
            assert accuracy >= _metrics(client_dir)["test_accuracy"] - 0.2
    finally:
        local.stop()
    result = evaluation.evaluate_leakage(str(client_dir), budget=AttackBudget(decoder_epochs=1, inversion_steps=5,
                                                                              inversion_images=4),
                                         evaluation=EvaluationConfig(train_images=200, test_images=100,
                                                                     recognizer_epochs=1))
    assert result["worst_ssim"] is not None and result["excess_ssim"] is not None
    assert os.path.exists(client_dir / "leakage.json")


def test_four_splitfed_clients_at_once_leave_a_consistent_state(tmp_path):
    """Steps, evaluations and epoch ends of four clients from eight threads at once: no step lost or applied
    twice, one submission per client, and the epoch's average over exactly those submissions."""
    from nopeek_tf import model_dir as model_dir_lib
    from nopeek_tf.config import TrainConfig
    from nopeek_tf.split_learning.server import settle_config
    from nopeek_tf.split_learning.protocol import StatusError
    from nopeek_tf.split_learning.server_state import ServerState

    clients, steps, batch = 4, 6, 4
    config, info = settle_config(TrainConfig(dataset="orl_faces", defence="plain", alpha=0.0, epochs=2,
                                             batch_size=batch, cut="conv4"))
    model_dir_lib.prepare(str(tmp_path), config)
    state = ServerState(config, info, protocol.SplitSettings(), clients, "splitfed", 60.0, str(tmp_path),
                        log=lambda line: None)
    agreement = protocol.agreement_json(config, protocol.SplitSettings())
    shape = state.activation_shape
    errors, ends_accepted, lock = [], [], threading.Lock()

    def train(client_id: int) -> None:
        try:
            rng = np.random.default_rng(client_id)
            state.Join(pb.JoinRequest(client_id=client_id, config_json=agreement, next_step=0, examples=10))
            assert state.AwaitTurn(pb.TurnRequest(client_id=client_id, wait_seconds=5)).go
            for step in range(steps):
                activations = rng.uniform(size=(batch, *shape)).astype(np.float32)
                state.Step(pb.StepRequest(client_id=client_id, step=step, activations=protocol.encode(activations, "float32"),
                                          labels=rng.integers(0, info.num_classes, batch).tolist()))
            weights = [np.full(s, client_id + 1.0, np.float32) for s in state.client_weight_shapes]
            end = pb.EpochEndRequest(client_id=client_id, epoch=0, examples=10 * (client_id + 1),
                                     client_weights=protocol.encode_weights(weights))
            duplicate = threading.Thread(target=end_epoch, args=(end,))
            duplicate.start()
            end_epoch(end)
            duplicate.join()
        except Exception as error:  # noqa: BLE001  (reported below with its client)
            errors.append((client_id, repr(error)))

    def end_epoch(request) -> None:
        try:
            state.EndEpoch(request)
            with lock:
                ends_accepted.append(request.client_id)
        except StatusError:
            pass  # the twin of an accepted submission

    evaluations = []

    def evaluate(client_id: int) -> None:
        rng = np.random.default_rng(100 + client_id)
        request = pb.EvaluateRequest(client_id=client_id, activations=protocol.encode(
            rng.uniform(size=(batch, *shape)).astype(np.float32), "float32"))
        for _ in range(2000):
            if len([c for c in evaluations if c == client_id]) == steps:
                return
            try:
                outputs = protocol.decode(state.Evaluate(request).outputs, "outputs", "float32", None)
                assert outputs.shape == (batch, info.num_classes)
                with lock:
                    evaluations.append(client_id)
            except StatusError as error:
                assert "has not joined" in str(error), str(error)
                time.sleep(0.005)
            except Exception as error:  # noqa: BLE001  (reported below with its client)
                errors.append((client_id, repr(error)))
                return

    threads = [threading.Thread(target=train, args=(c,)) for c in range(clients)]
    threads += [threading.Thread(target=evaluate, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert sorted(evaluations) == sorted(list(range(clients)) * steps)
    assert sorted(ends_accepted) == list(range(clients))  # one submission each; the twins refused
    assert state.epoch == 1 and len(state.history) == 1
    epoch = state.history[0]
    assert epoch["steps"] == clients * steps and epoch["examples"] == clients * steps * batch
    assert epoch["clients_trained"] == list(range(clients)) and epoch["clients_left_out"] == []
    assert all(state.expected_step[c] == steps for c in range(clients))
    expected = sum((c + 1) * 10 * (c + 1) for c in range(clients)) / sum(10 * (c + 1) for c in range(clients))
    for weight in state.client_weights:
        np.testing.assert_allclose(weight, expected, rtol=1e-6)
