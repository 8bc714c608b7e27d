r"""Runs the attacking server against the unchanged split client and scores what it got (docs/threat_model.md).

  python -m train.attack_benchmark --clients=undefended,nopeek1,nopeek3,bounded \
      --attacks=fsha,substitute,label_inference --defences=off,on

Each row is a real train.attack_server and a real train.split_client (one client, 1/--num_shards of the
dataset) on loopback. ``--defences=off``: the client as it was before it defended itself
(--hijack_check_every=0, no --peer_key_file); ``on``: its defaults plus a peer key. The score is on the
client's own training images (nopeek_tf.adversary.scoring): the reconstructions' SSIM, the label-only floor and
the excess, after how many steps the attack succeeded; for label inference the direction, clustering and
norm attacks. Also: how the client's run ended (finished with its logged accuracy, or stopped with its
one-line reason and the step), and the bits each training image may have given the server. Rows are added to
<out>/results.csv and <out>/results.md as they finish.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time

from absl import flags

from nopeek_tf import runtime

from .split_benchmark import program

FLAGS = flags.FLAGS
CLIENTS = {  # name: (training flags, what it is)
    "undefended": (["--defence=plain", "--alpha=0", "--cut=conv2"], "undefended, `conv2`"),
    "nopeek1": (["--defence=plain", "--alpha=1", "--cut=conv2"], "NoPeek alpha 1, `conv2`"),
    "nopeek3": (["--defence=plain", "--alpha=3", "--cut=conv2"], "NoPeek alpha 3, `conv2`"),
    "bounded": ([], "the bounded default (`dense`, 4 values, noise 0.26)"),
}
COLUMNS = ["client", "attack", "defences", "outcome", "stopped_at_step", "test_accuracy", "ssim", "label_floor_ssim",
           "excess_ssim", "steps_to_success", "best_rolling_excess", "direction_auc", "cluster_accuracy", "norm_auc",
           "chance_accuracy", "scored_gradients", "training_bits_per_image", "scored_steps", "epochs_captured", "epochs",
           "learning_rate", "wall_seconds",
           "command"]


def define_flags() -> None:
    """Defines the command-line flags."""
    flags.DEFINE_list("clients", list(CLIENTS), f"Client settings, from: {', '.join(CLIENTS)}.")
    flags.DEFINE_list("attacks", ["fsha", "substitute", "label_inference"], "Attacks.")
    flags.DEFINE_list("defences", ["off", "on"], "off: the client without its guard and key; on: its defaults "
                      "and --peer_key_file.")
    flags.DEFINE_string("dataset", "fashion_mnist", "An offline dataset (the attacker's public images: its test split).")
    flags.DEFINE_integer("num_shards", 6, "The client holds 1/num_shards of the training split (6: 10,000 images).")
    flags.DEFINE_integer("epochs", 2, "Epochs of the substitute and label-inference runs.")
    flags.DEFINE_integer("fsha_epochs", 10, "Epochs of the FSHA runs (the published attack trains ~10,000 steps).")
    flags.DEFINE_float("fsha_learning_rate", 1e-4, "The clients' learning rate in the FSHA runs (the server sets the "
                       "training recipe: the clients must give the flags it gives).")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("pilot_steps", 600, "The attacker's pre-training on public images.")
    flags.DEFINE_list("extra_flags", [], "Training flags added to both programs of every run, comma-separated.")
    flags.DEFINE_string("out", "docs/threat_model", "Output folder (results.csv, results.md).")
    flags.DEFINE_string("work_dir", "runs/attack_benchmark", "Where the runs go.")


def _wait_for_line(path: str, pattern: str, process, timeout: float = 3600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path) as f:
            if re.search(pattern, f.read()):
                return
        if process.poll() is not None:
            raise RuntimeError(f"{path}: ended (exit {process.returncode}) before {pattern!r}")
        time.sleep(1)
    raise RuntimeError(f"{path}: no {pattern!r} within {timeout} s")


def _last_error(log_path: str) -> str:
    with open(log_path) as f:
        errors = [line.strip() for line in f if line.startswith("error:")]
    return errors[-1] if errors else "exited without an error line"


def run_attack(client: str, attack: str, defended: bool, work: str, port: int, log=print) -> dict:
    """One row: the attacking server and one client to the end (or until the client stops), then the score."""
    from nopeek_tf.adversary import scoring
    from nopeek_tf.config import TrainConfig

    name = f"{client}-{attack}-{'on' if defended else 'off'}"
    folder = os.path.join(work, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    epochs = FLAGS.fsha_epochs if attack == "fsha" else FLAGS.epochs
    training = [f"--dataset={FLAGS.dataset}", f"--epochs={epochs}", f"--batch_size={FLAGS.batch_size}", "--seed=0",
                *CLIENTS[client][0], *FLAGS.extra_flags]
    if attack == "fsha":
        training.append(f"--learning_rate={FLAGS.fsha_learning_rate}")
    if attack == "label_inference":
        training.append("--layout=u_shaped")
    defences = [f"--peer_key_file={os.path.join(work, 'peer_key')}"] if defended else ["--hijack_check_every=0"]
    started = time.time()
    server_log, client_log = os.path.join(folder, "server.log"), os.path.join(folder, "client.log")
    server = program("train.attack_server", [*training, f"--attack={attack}", f"--pilot_steps={FLAGS.pilot_steps}",
                                             f"--port={port}", "--client_timeout_seconds=120",
                                             f"--model_dir={folder}/server"], server_log)
    _wait_for_line(server_log, "split server on port", server)
    client_args = [*training, f"--server=localhost:{port}", f"--num_shards={FLAGS.num_shards}",
                   f"--model_dir={folder}/client", *defences]
    finished = program("train.split_client", client_args, client_log).wait() == 0
    if server.wait() != 0:
        raise RuntimeError(f"the attacking server failed; see {server_log}")
    row = {"client": client, "attack": attack, "defences": "on" if defended else "off", "epochs": epochs,
           "learning_rate": FLAGS.fsha_learning_rate if attack == "fsha" else "",
           "wall_seconds": round(time.time() - started),
           "command": f"python -m train.attack_benchmark --clients={client} --attacks={attack} "
                      f"--defences={'on' if defended else 'off'}"}
    if finished:
        with open(os.path.join(folder, "client", "metrics.json")) as f:
            metrics = json.load(f)
        row.update(outcome="finished", test_accuracy=metrics["test_accuracy"],
                   training_bits_per_image=metrics["training_bits_per_image"])
    else:
        error = _last_error(client_log)
        steps = re.findall(r"at steps ([\d, ]+);", error)
        row.update(outcome=error.removeprefix("error: "),
                   stopped_at_step=int(steps[0].split(",")[-1]) if steps else "")
        send_log = os.path.join(folder, "client", "checkpoints", "training_sends.json")
        if os.path.exists(send_log):
            with open(send_log) as f:
                row["training_bits_per_image"] = round(sum(send["bits"] for send in json.load(f)["sends"]), 4)
    with open(os.path.join(folder, "client", "config.json")) as f:
        config = TrainConfig.from_json(json.load(f))
    row.update(scoring.score(os.path.join(folder, "server"), config, num_shards=FLAGS.num_shards))
    log(f"{name}: {row['outcome'][:100]}; " + ", ".join(
        f"{key} {row[key]:.3f}" for key in ("ssim", "excess_ssim", "direction_auc", "cluster_accuracy")
        if isinstance(row.get(key), float)))
    return row


def write_table(rows: list[dict], out: str) -> None:
    """results.csv and results.md."""
    from nopeek_tf import files
    from nopeek_tf.device.bound import bits_text

    files.write_csv(os.path.join(out, "results.csv"), rows, COLUMNS)

    def bold(text):
        return f"**{text}**" if text else ""

    def number(row, key, digits=3):
        value = row.get(key)
        return f"{float(value):.{digits}f}" if value not in (None, "") else ""

    lines = ["| client | attack | client's defences | how its run ended | logged test accuracy | SSIM | floor | "
             "**excess** (last epoch) | peak excess (20 batches) | steps to success | label inference: direction "
             "AUC, cluster accuracy (chance) | bits per training image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        label = (f"{number(row, 'direction_auc')}, {number(row, 'cluster_accuracy')} "
                 f"({number(row, 'chance_accuracy')})" if row.get("direction_auc") not in (None, "") else "")
        outcome = row["outcome"]
        if "hijack" in outcome:
            outcome = f"stopped: hijack detected at step {row.get('stopped_at_step')}"
        elif "refused the client half" in outcome:
            outcome = "stopped: refused the substituted half"
        lines.append(f"| {CLIENTS[row['client']][1]} | {row['attack']} | {row['defences']} | {outcome} | "
                     f"{number(row, 'test_accuracy')} | {number(row, 'ssim')} | {number(row, 'label_floor_ssim')} | "
                     f"{bold(number(row, 'excess_ssim'))} | {number(row, 'best_rolling_excess')} | "
                     f"{row.get('steps_to_success') or ''} | {label} | "
                     f"{bits_text(float(row['training_bits_per_image'])) if row.get('training_bits_per_image') else ''} |")
    files.write_text(os.path.join(out, "results.md"), "\n".join(lines) + "\n")


def main(argv):
    runtime.start_tensorflow_script(argv)
    from nopeek_tf.split_learning import protocol
    from nopeek_tf.training.distribute import free_ports

    os.makedirs(FLAGS.out, exist_ok=True)
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    key = os.path.join(FLAGS.work_dir, "peer_key")
    if not os.path.exists(key):
        protocol.new_peer_key(key)
    results_path = os.path.join(FLAGS.out, "results.csv")
    rows = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            rows = list(csv.DictReader(f))
    for client in FLAGS.clients:
        for attack in FLAGS.attacks:
            for defences in FLAGS.defences:
                print(f"{client}-{attack}-{defences}: running ...", flush=True)
                row = run_attack(client, attack, defences == "on", FLAGS.work_dir, free_ports(1)[0],
                                 log=lambda line: print(line, flush=True))
                rows = [r for r in rows if (r["client"], r["attack"], r["defences"]) != (client, attack, defences)]
                rows.append(row)
                rows.sort(key=lambda r: (list(CLIENTS).index(r["client"]), r["attack"], r["defences"]))
                write_table(rows, FLAGS.out)
    print(f"wrote {results_path} and results.md", flush=True)


def run() -> None:
    """``python -m train.attack_benchmark``."""
    runtime.run_absl_cli(define_flags, main)


if __name__ == "__main__":
    run()
