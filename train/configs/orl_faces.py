r"""ORL faces at 56x46, cut conv2: NoPeek over alpha against Gaussian and uniform noise.

  python -m train.sweep --config=orl_faces

40 epochs at batch 32; attacks: public client on all 280 training faces, leaked
pairs on 60 test faces, scored on the other 60 (inversion: 32 of them, 300
steps); decoders width 32, up to 40 epochs; the recogniser is an orl_cnn trained
on the raw training faces. 9 models, about 3-5 minutes each on 2 cores (README:
"Measured: ORL faces").
"""

from nopeek_tf.config import AttackBudget, EvaluationConfig, TrainConfig
from nopeek_tf.experiments.sweep import SweepConfig, SweepSettings


def get_config() -> SweepSettings:
    return SweepSettings(
        sweep=SweepConfig(sweep_dir="runs/sweep_orl", alphas=(0, 1, 3, 10), gaussian_noise=(1, 3),
                          uniform_noise=(1, 3)),
        train=TrainConfig(dataset="orl_faces", image_size=(56, 46), epochs=40, batch_size=32, alpha_warmup_epochs=0.0,
                          alpha_ramp_epochs=0.0, verbose=0),  # as measured: no NoPeek warm-up
        budget=AttackBudget(leaked_fraction=0.5, decoder_width=32, decoder_epochs=40, inversion_steps=300,
                            inversion_images=32),
        evaluation=EvaluationConfig(train_images=280, test_images=120, recognizer_epochs=20))
