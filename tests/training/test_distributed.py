"""MirroredStrategy over two logical CPU devices follows the single-device loss trajectory.

Logical devices must be configured before TensorFlow runs any op, so the check runs in a
fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from tests.training.helpers import TrainableSam, fixed_batch, fresh_model

    x, y = fixed_batch(batch=4, prompts=2, seed=3)
    data = tf.data.Dataset.from_tensors((x, y))
    weights = sys.argv[1]
    fresh_model(seed=0).save_weights(weights)

    def trajectory(strategy):
        with strategy.scope():
            model = TrainableSam(fresh_model(seed=0).config)
            model.load_weights(weights)
            model.compile(keras.optimizers.SGD(0.05), run_eagerly=True)
        history = model.fit(data, epochs=4, verbose=0)
        return history.history["loss"], model.get_weights()

    single, w1 = trajectory(tf.distribute.get_strategy())
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, w2 = trajectory(mirrored_strategy)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2))
    print(json.dumps({"replicas": mirrored_strategy.num_replicas_in_sync, "single": single,
                      "mirrored": mirrored, "max_weight_diff": diff}))
""")


def test_mirrored_strategy_matches_single_device(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "init.weights.h5")], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["replicas"] == 2
    single, mirrored = result["single"], result["mirrored"]
    assert single[-1] < single[0]
    for a, b in zip(single, mirrored):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (single, mirrored)
    assert result["max_weight_diff"] < 1e-4
