"""scripts/serve.py: its arguments, and the real command serving a saved tiny model over HTTP."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import kclip
from kclip.serve.server import free_port

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kclip_script_serve", ROOT / "scripts" / "serve.py")
serve_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_script)


def test_arguments_reach_the_server_and_abbreviations_are_refused():
    calls = []
    code = serve_script.main(["--model", "m.keras", "--index", "idx", "--port", "9123", "--max-upload-mb", "2"],
                             load_model=lambda path: f"model from {path}",
                             serve=lambda model, index, **options: calls.append((model, index, options)))
    assert code == 0
    model, index, options = calls[0]
    assert (model, index) == ("model from m.keras", "idx")
    assert options["host"] == "127.0.0.1" and options["port"] == 9123
    assert options["max_upload_bytes"] == 2 * 2**20
    assert options["compute_threads"] == 1  # one thread per op unless asked
    serve_script.main(["--model", "m", "--index", "i", "--compute-threads", "0"], load_model=lambda path: None,
                      serve=lambda model, index, **options: calls.append(options))
    assert calls[-1]["compute_threads"] is None  # 0: the libraries' own defaults
    for argv in (["--model", "m", "--ind", "i"], ["--model", "m", "--index", "i", "--port", "0"],
                 ["--model", "m", "--index", "i", "--max-upload-mb", "0"],
                 ["--model", "m", "--index", "i", "--compute-threads", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            serve_script.parse_args(argv)
        assert exit_info.value.code == 2


def test_a_missing_index_is_a_one_line_error(tmp_path, capsys):
    from kclip.serve.server import serve_page

    code = serve_script.main(["--model", "m", "--index", str(tmp_path / "none")], load_model=lambda path: _Model(),
                             serve=serve_page)
    assert code == 2 and "holds no kclip index" in capsys.readouterr().err


class _Model:
    image_size = 32

    def fingerprint(self):
        return "x"


def test_the_command_serves_a_saved_model_and_warns_about_open_hosts(tmp_path):
    from helpers import tiny_model
    from serve_fixtures import write_photos

    model = tiny_model()
    model.save(tmp_path / "model.keras")
    kclip.build_index(model, write_photos(tmp_path / "photos"), tmp_path / "index", progress=False)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(tmp_path / "model.keras"),
               "--index", str(tmp_path / "index"), "--host", "0.0.0.0", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": "a red circle", "k": 2}, timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start: {process.communicate()[0]}")
                time.sleep(0.3)
        assert answer.status_code == 200 and len(answer.json()["results"]) == 2
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "other machines can reach" in output


def test_serving_limits_threads_per_request_and_restores_them_after():
    import faiss
    import keras

    from kclip.serve.server import threads_per_request

    torch_threads = None
    if keras.config.backend() == "torch":
        import torch

        torch_threads = torch.get_num_threads
    before = (torch_threads() if torch_threads else None, faiss.omp_get_max_threads())
    with threads_per_request(1):
        assert faiss.omp_get_max_threads() == 1
        if torch_threads:
            assert torch_threads() == 1
    assert (torch_threads() if torch_threads else None, faiss.omp_get_max_threads()) == before
