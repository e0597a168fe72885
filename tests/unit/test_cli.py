from qwen_image_server.cli import main
from qwen_image_server.keys import KeyStore


def test_keys_create_prints_a_working_key_once(tmp_path, capsys):
    assert main(["keys", "create", "--name", "ci", "--data-dir", str(tmp_path)]) == 0
    key = capsys.readouterr().out.strip()
    store = KeyStore(tmp_path / "server.db")
    assert store.verify(key) is not None and store.count() == 1


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path, capsys):
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "no API key exists" in capsys.readouterr().err
    assert KeyStore(tmp_path / "server.db").count() == 0


def test_demo_models_command_lists_every_family(demo_models_dir, tmp_path, capsys):
    assert main(["demo-models", "--dir", str(demo_models_dir), "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for family in ("qwen-image", "qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2.1"):
        assert f"{family}: {demo_models_dir / family}" in printed
