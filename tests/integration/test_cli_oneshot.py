"""``qwen-image-server edit`` and ``generate``: in process on the demo models, and against a real server."""

from __future__ import annotations

import pytest
from PIL import Image

from qwen_image_server.cli import main
from tests.conftest import png_bytes


@pytest.fixture
def in_process(demo_models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QIS_DEMO_MODELS_DIR", str(demo_models_dir))
    return ["--data-dir", str(tmp_path / "data")]


def write_png(path, size, colour=(200, 80, 40)):
    path.write_bytes(png_bytes(size, colour))
    return str(path)


def test_generate_in_process_writes_the_image_with_a_step_progress_bar(in_process, tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", "-p", "a red fox", "--size", "512*512", "--seed", "1", "-o", str(out),
                 *in_process]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out)
    assert "2/2" in printed.err and "step" in printed.err
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (512, 512))


def test_edit_in_process_with_two_images_and_n_two_names_each_output(in_process, tmp_path, capsys):
    images = [write_png(tmp_path / "a.png", (512, 512)), write_png(tmp_path / "b.png", (512, 512), (0, 90, 200))]
    out = tmp_path / "edited.webp"
    assert main(["edit", *images, "-p", "blend them", "--n", "2", "--size", "512*512", "-o", str(out),
                 *in_process]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "edited-1.webp"), str(tmp_path / "edited-2.webp")]
    for path in written:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("WEBP", (512, 512))


def test_in_process_errors_are_the_api_messages_and_exit_1(in_process, tmp_path, capsys):
    images = [write_png(tmp_path / f"{i}.png", (64, 64)) for i in range(4)]
    assert main(["edit", *images, "-p", "too many", "-o", str(tmp_path / "x.png"), *in_process]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["generate", "-p", "x", "-o", str(tmp_path / "x.gif"), *in_process]) == 1
    assert ".gif" in capsys.readouterr().err


def test_generate_on_a_server_follows_the_task(server, tmp_path, capsys):
    out = tmp_path / "remote.jpg"
    assert main(["generate", "-p", "a lighthouse", "--size", "512*512", "-o", str(out), "--server", server.url,
                 "--api-key", server.key]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out) and "2/2" in printed.err
    with Image.open(out) as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))


def test_edit_on_a_server_sends_the_local_image(server, tmp_path, capsys):
    image = write_png(tmp_path / "wide.png", (1024, 512))
    out = tmp_path / "remote-edit.png"
    assert main(["edit", image, "-p", "make it blue", "-o", str(out), "--server", server.url,
                 "--api-key", server.key]) == 0
    with Image.open(out) as result:
        assert result.width > result.height  # follows the uploaded image's aspect ratio


def test_server_errors_exit_1_with_the_api_message(server, tmp_path, capsys, monkeypatch):
    assert main(["generate", "-p", "x", "-m", "no-such-model", "-o", str(tmp_path / "x.png"), "--server",
                 server.url, "--api-key", server.key]) == 1
    assert "ModelNotFound" in capsys.readouterr().err
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    assert main(["generate", "-p", "x", "-o", str(tmp_path / "x.png"), "--server", server.url]) == 2
    assert "API key" in capsys.readouterr().err


def mask_file(path, size, box):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    mask.save(path)
    return str(path)


def test_in_process_edits_take_a_mask_by_the_apis_rules(in_process, tmp_path, capsys):
    image = write_png(tmp_path / "in.png", (512, 512))
    mask = mask_file(tmp_path / "mask.png", (512, 512), (0, 0, 128, 128))
    out = tmp_path / "inpainted.png"
    assert main(["edit", image, "--mask", mask, "-p", "a window", "-m", "qwen-image-edit", "-o", str(out),
                 *in_process]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as result:
        assert result.size[0] % 16 == 0
    assert main(["edit", image, "--mask", mask, "-p", "x", "-m", "qwen-image-edit-plus", "-o", str(out),
                 *in_process]) == 1
    assert "does not take a mask" in capsys.readouterr().err, "the API's own message"
    small = mask_file(tmp_path / "small.png", (400, 400), (0, 0, 8, 8))
    assert main(["edit", image, "--mask", small, "-p", "x", "-m", "qwen-image-edit", "-o", str(out),
                 *in_process]) == 1
    assert "must match the image's size" in capsys.readouterr().err


def test_a_mask_on_a_server_goes_to_the_edits_endpoint(server, tmp_path, capsys):
    image = write_png(tmp_path / "in.png", (512, 512))
    mask = mask_file(tmp_path / "mask.png", (512, 512), (0, 0, 128, 128))
    out = tmp_path / "remote-inpainted.png"
    assert main(["edit", image, "--mask", mask, "-p", "a window", "-m", "qwen-image-edit", "-o", str(out),
                 "--server", server.url, "--api-key", server.key]) == 0
    with Image.open(capsys.readouterr().out.strip()) as result:
        assert result.format == "PNG"
