"""trainer.distribution=data_parallel: two simulated CPU devices compute what one device does.

JAX splits the host CPU into two devices with XLA_FLAGS, which must be set before jax starts,
so the run happens in a subprocess (tests/distribution_worker.py).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kclip.backends.jax import distribution

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[jax]')")
    out = tmp_path_factory.mktemp("distribution") / "arrays.npz"
    environment = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "",
                   "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                   "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(TESTS / "distribution_worker.py"), str(out)],
                            capture_output=True, text=True, env=environment, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.split("RESULT ", 1)[1].splitlines()[0])
    return summary, np.load(out)


@pytest.mark.cross_backend
def test_data_parallel_gives_the_loss_and_gradients_of_one_device(two_device_run):
    summary, arrays = two_device_run
    single, parallel = summary["single"], summary["parallel"]
    assert summary["devices"] == 2
    # The batch really was split (4 rows per device) and the weights replicated on both.
    assert parallel["input_devices"] == 2 and parallel["input_shard_rows"] == [4]
    assert parallel["weight_devices"] == 2 and single["weight_devices"] == 1
    # float32 tolerance: the two programs reduce the batch in a different order (per shard,
    # then across devices), so sums differ by a few ulps of their terms.
    assert parallel["loss"] == pytest.approx(single["loss"], rel=1e-6)
    count = sum(1 for key in arrays.files if key.startswith("single/gradients/"))
    assert count > 10
    # Some gradients are zero in exact arithmetic (an attention key bias cannot change a
    # softmax) and hold only rounding noise; the absolute floor is set by the largest gradient.
    scale = max(np.abs(arrays[f"single/gradients/{i}"]).max() for i in range(count))
    for i in range(count):
        want, got = arrays[f"single/gradients/{i}"], arrays[f"parallel/gradients/{i}"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * scale)
    # fit's own train step under DataParallel: same loss, same weights after the step.
    assert parallel["fit_loss"] == pytest.approx(single["fit_loss"], rel=1e-6)
    assert parallel["fit_loss"] == pytest.approx(single["loss"], rel=1e-6)
    # A batch that does not split over 2 devices is evaluated whole, as on one device.
    assert parallel["odd_batch_eval_loss"] == pytest.approx(single["odd_batch_eval_loss"], rel=1e-5)
    for key in arrays.files:
        if key.startswith("single/weights_after_step/"):
            # Adam's first step is lr * g / (|g| + eps): where |g| is near eps (1e-7) its
            # sensitivity is lr / eps = 1e4, so the gradients' 1e-9 rounding differences may move
            # a weight by up to about 1e-5. 1e-4 is a tenth of one 1e-3 step; the gradients
            # themselves are checked tightly above.
            np.testing.assert_allclose(arrays[key.replace("single", "parallel")], arrays[key],
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.cross_backend
def test_similarity_matrix_spans_the_global_batch(two_device_run):
    summary, _ = two_device_run
    single, parallel = summary["single"], summary["parallel"]
    # 8 captions x 8 images, though each device holds 4 of each.
    assert parallel["logits_shape"] == [8, 8]
    np.testing.assert_allclose(parallel["logits"], single["logits"], rtol=1e-5, atol=1e-5)
    # What each device would compute alone (its 4 x 4 block) is a different, smaller loss:
    # the test above would catch a loss that saw only local negatives.
    local = np.mean(summary["per_device_losses"])
    assert abs(local - parallel["loss"]) > 0.05, (local, parallel["loss"])


@pytest.mark.backend_neutral
def test_data_parallel_off_jax_is_a_clear_error(monkeypatch):
    assert distribution.configure("none") is None
    with pytest.raises(ValueError, match="Unknown trainer.distribution"):
        distribution.configure("model_parallel")
    if keras.config.backend() == "jax":
        pytest.skip("data_parallel is supported here")
    if keras.config.backend() == "torch":
        # Outside torchrun there is one process: it trains alone (tests/test_torch_distributed.py runs two).
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        assert distribution.configure("data_parallel", train_batch_size=8) == 1
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match="partial torchrun environment.*MASTER_ADDR"):
            distribution.configure("data_parallel")
        return
    with pytest.raises(ValueError, match="needs KERAS_BACKEND=jax or torch.*MirroredStrategy"):
        distribution.configure("data_parallel")


@pytest.mark.backend_neutral
def test_distribution_and_jit_compile_config_keys():
    from kclip.config import parse_config

    config = parse_config([])
    assert (config.trainer.distribution, config.trainer.jit_compile) == ("none", "auto")
    config = parse_config(["--trainer.distribution", "data_parallel", "--trainer.jit_compile", "false"])
    assert (config.trainer.distribution, config.trainer.jit_compile) == ("data_parallel", False)
    with pytest.raises(ValueError, match="trainer.jit_compile"):
        parse_config(["--trainer.jit_compile", "sometimes"])
    with pytest.raises(ValueError, match="trainer.distribution"):
        parse_config(["--trainer.distribution", "pipeline"])
