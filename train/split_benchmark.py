r"""Measures split training on loopback against central training: accuracy, time per epoch, bytes per epoch.

  python -m train.split_benchmark --dataset=fashion_mnist --out=docs/split_training

Runs the real programs (python -m train.train, train.split_server, train.split_client) one setting at a time:
central training; one client (the protocol's overhead); 2 and 4 clients (shards of the training split) in
each schedule; the float16 and int8 wires. --extra_flags adds training flags to every run (e.g.
--extra_flags=--defence=plain,--cut=conv2 for an undefended client that sends 6,272 values). Writes
<out>/results.csv and <out>/results.md (the table docs/split_training.md shows), adding to earlier rows;
--rescan rebuilds them from the runs in --work_dir without training.
FedAvg's bytes are computed: each round a client downloads and uploads the whole model in float32.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import flags

from nopeek_tf import runtime

FLAGS = flags.FLAGS
COLUMNS = ["setting", "flags", "clients", "schedule", "wire", "test_accuracy", "epoch_seconds", "vs_central",
           "step_bytes_per_epoch_per_client", "handover_bytes_per_epoch_per_client", "bytes_per_epoch_per_client",
           "fedavg_bytes_per_round", "wall_seconds"]
RUNS = [  # (clients, schedule, wire)
    (1, "sequential", "float32"), (2, "sequential", "float32"), (2, "splitfed", "float32"),
    (4, "sequential", "float32"), (4, "splitfed", "float32"), (1, "sequential", "float16"),
    (1, "sequential", "int8")]


def define_flags() -> None:
    """Defines the command-line flags."""
    flags.DEFINE_string("dataset", "fashion_mnist", "The dataset (an offline one).")
    flags.DEFINE_integer("epochs", 2, "Epochs of every run.")
    flags.DEFINE_list("extra_flags", [], "Training flags added to every run, comma-separated.")
    flags.DEFINE_string("out", "docs/split_training", "Output folder.")
    flags.DEFINE_string("work_dir", "runs/split_benchmark", "Where the runs' model dirs go.")
    flags.DEFINE_list("only", [], "Run only these settings besides central (CLIENTS-SCHEDULE-WIRE, e.g. "
                      "2-splitfed-float32).")
    flags.DEFINE_bool("rescan", False, "Train nothing: rebuild the rows of the runs already in --work_dir from their "
                      "model dirs and logs (wall times from the earlier results.csv).")


def program(module: str, args: list[str], log_path: str) -> subprocess.Popen:
    """``python -m module args`` in the background, its output to ``log_path``."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT, text=True)


def wait(process: subprocess.Popen, name: str) -> None:
    """Waits for ``process``; RuntimeError naming it when it fails."""
    if process.wait() != 0:
        raise RuntimeError(f"{name} failed (exit {process.returncode}); see its log in --work_dir")


def _metrics(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return json.load(f)


def central(training: list[str], work: str) -> dict:
    """Central train.train: test accuracy and seconds per epoch (its progress lines; they include the test pass)."""
    model_dir = os.path.join(work, "central")
    shutil.rmtree(model_dir, ignore_errors=True)  # a fresh run (an old one would resume with nothing to do)
    started = time.time()
    wait(program("train.train", [*training, f"--model_dir={model_dir}"], model_dir + ".log"), "train.train")
    return central_row(model_dir, time.time() - started)


def central_row(model_dir: str, wall: float | None) -> dict:
    """The row of a finished central run."""
    with open(model_dir + ".log") as f:
        seconds = [float(value) for value in re.findall(r"^\d+/\d+ - (\d+)s", f.read(), re.MULTILINE)]
    metrics = _metrics(model_dir)
    return {"setting": "central", "clients": 1, "schedule": "", "wire": "", "test_accuracy": metrics["test_accuracy"],
            "epoch_seconds": sum(seconds) / len(seconds), "wall_seconds": wall}


def split(training: list[str], work: str, clients: int, schedule: str, wire: str, port: int) -> dict:
    """A split server and ``clients`` clients to the end: the clients' mean accuracy, epoch seconds, bytes."""
    name = f"{clients}-{schedule}-{wire}"
    folder = os.path.join(work, name)
    shutil.rmtree(folder, ignore_errors=True)
    common = [*training, f"--wire={wire}"]
    started = time.time()
    server = program("train.split_server", [*common, f"--port={port}", f"--num_clients={clients}",
                                             f"--schedule={schedule}", f"--model_dir={folder}/server"],
                      f"{folder}-server.log")
    programs = [program("train.split_client", [*common, f"--server=localhost:{port}", f"--shard={i}",
                                                f"--num_shards={clients}", f"--model_dir={folder}/client{i}"],
                         f"{folder}-client{i}.log") for i in range(clients)]
    for index, client in enumerate(programs):
        wait(client, f"client {index}")
    wait(server, "the split server")
    return split_row(folder, clients, schedule, wire, time.time() - started)


def split_row(folder: str, clients: int, schedule: str, wire: str, wall: float | None) -> dict:
    """The row of a finished split run: the clients' means (bytes in the steady state: the first epoch has no
    client half to download)."""
    client_metrics = [_metrics(f"{folder}/client{i}") for i in range(clients)]
    server_history = _metrics(f"{folder}/server")["epochs_history"]
    steps = sum(sum(e["step_bytes"] for e in m["epochs_history"]) / len(m["epochs_history"]) for m in client_metrics)
    handover = 2 * client_metrics[0]["client_half_bytes"]  # down at the turn, up at its end
    return {"setting": os.path.basename(folder), "clients": clients, "schedule": schedule, "wire": wire,
            "test_accuracy": sum(m["test_accuracy"] for m in client_metrics) / clients,
            "epoch_seconds": sum(epoch["seconds"] for epoch in server_history) / len(server_history),
            "step_bytes_per_epoch_per_client": steps / clients, "handover_bytes_per_epoch_per_client": handover,
            "bytes_per_epoch_per_client": steps / clients + handover,
            "fedavg_bytes_per_round": client_metrics[0]["fedavg_bytes_per_round"], "wall_seconds": wall}


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf import files
    from nopeek_tf.training.distribute import free_ports

    os.makedirs(FLAGS.out, exist_ok=True)
    extra = "_".join(flag.lstrip("-").replace("=", "") for flag in FLAGS.extra_flags) or "default"
    work = os.path.join(FLAGS.work_dir, f"{FLAGS.dataset}_{extra}")
    os.makedirs(work, exist_ok=True)
    training = [f"--dataset={FLAGS.dataset}", f"--epochs={FLAGS.epochs}", *FLAGS.extra_flags]
    results_path = os.path.join(FLAGS.out, "results.csv")
    rows = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            rows = [row for row in csv.DictReader(f)]
    label = " ".join(FLAGS.extra_flags) or "(the dataset's default)"
    reference = None
    settings = [("central", None)] + [(f"{c}-{s}-{w}", (c, s, w)) for c, s, w in RUNS]
    for name, run in settings:
        if FLAGS.only and name not in FLAGS.only and name != "central":
            continue
        if FLAGS.rescan:
            folder = os.path.join(work, name)
            if not os.path.exists(os.path.join(folder, "metrics.json" if run is None else "server/metrics.json")):
                continue
            wall = next((float(r["wall_seconds"]) for r in rows if r["setting"] == name and r["flags"] == label
                         and r.get("wall_seconds")), None)
            row = central_row(folder, wall) if run is None else split_row(folder, *run, wall)
        else:
            print(f"{name}: running ...", flush=True)
            row = central(training, work) if run is None else split(training, work, *run, port=free_ports(1)[0])
        if run is None:
            reference = row
        row.update(flags=label, vs_central=(row["epoch_seconds"] / reference["epoch_seconds"]) if reference else "")
        rows = [r for r in rows if not (r["setting"] == name and r["flags"] == label)] + [row]
        files.write_csv(results_path, rows, COLUMNS)
        print(f"{name}: accuracy {row['test_accuracy']:.4f}, {row['epoch_seconds']:.1f} s per epoch"
              + (f" ({row['vs_central']:.2f}x central)" if reference and run else "")
              + (f", {row['bytes_per_epoch_per_client'] / 1e6:.2f} MB per epoch per client" if run else ""), flush=True)
    order = [name for name, _ in settings]
    rows.sort(key=lambda r: (r["flags"] != "(the dataset's default)", r["flags"], order.index(r["setting"])))
    files.write_csv(results_path, rows, COLUMNS)
    lines = ["| flags | setting | test accuracy | s per epoch | vs central | MB per epoch per client: steps + "
             "hand-over = total | FedAvg MB per round |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        def number(key, scale=1.0, digits=2):
            return f"{float(row[key]) / scale:.{digits}f}" if row.get(key) not in (None, "") else ""
        traffic = ""
        if row["setting"] != "central":
            traffic = (f"{number('step_bytes_per_epoch_per_client', 1e6)} + "
                       f"{number('handover_bytes_per_epoch_per_client', 1e6)} = "
                       f"{number('bytes_per_epoch_per_client', 1e6)}")
        lines.append(f"| {row['flags']} | {row['setting']} | {number('test_accuracy', digits=4)} | "
                     f"{number('epoch_seconds', digits=1)} | {number('vs_central')} | {traffic} | "
                     f"{number('fedavg_bytes_per_round', 1e6)} |")
    files.write_text(os.path.join(FLAGS.out, "results.md"), "\n".join(lines) + "\n")
    print(f"wrote {results_path} and results.md", flush=True)


def run() -> None:
    """The console script's entry (and ``python -m``'s)."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
