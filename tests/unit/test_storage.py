import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from qwen_image_server.errors import ResultNotFound
from qwen_image_server.media.storage import (
    ResultStore,
    UrlSigner,
    load_or_create_secret,
    media_type,
    remove_expired_periodically,
)

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path / "results", UrlSigner(b"secret"), "http://example.test", ttl_seconds=3600)


def parts(url):
    split = urlsplit(url)
    query = parse_qs(split.query)
    return split.path.rsplit("/", 1)[1], int(query["Expires"][0]), query["Signature"][0]


def test_saved_result_is_reachable_through_its_signed_url(store):
    name = store.save(KEY, 0, b"png-bytes")
    assert name == f"{KEY}-0.png"
    url = store.url(name, time.time())
    assert url.startswith("http://example.test/results/")
    name, expires, signature = parts(url)
    assert store.read_signed(name, expires, signature) == b"png-bytes"
    assert expires - time.time() == pytest.approx(3600, abs=5)


@pytest.mark.parametrize("tamper", ["name", "expires", "signature"])
def test_any_tampering_is_not_found(store, tamper):
    store.save(KEY, 1, b"one")
    name, expires, signature = parts(store.url(store.save(KEY, 0, b"zero"), time.time()))
    if tamper == "name":
        name = f"{KEY}-1.png"
    elif tamper == "expires":
        expires += 1
    else:
        signature = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(ResultNotFound):
        store.read_signed(name, expires, signature)


def test_saving_again_overwrites_the_same_name(store):
    first = store.save(KEY, 0, b"first run")
    assert store.save(KEY, 0, b"second run") == first
    assert (store.directory / first).read_bytes() == b"second run"
    assert [path.name for path in store.directory.iterdir()] == [first]


@pytest.mark.parametrize("output_format, name, content_type", [
    ("png", f"{KEY}-0.png", "image/png"), ("jpeg", f"{KEY}-0.jpg", "image/jpeg"),
    ("webp", f"{KEY}-0.webp", "image/webp")])
def test_each_output_format_has_its_extension_and_content_type(store, output_format, name, content_type):
    assert store.save(KEY, 0, b"encoded", output_format) == name
    assert store.read(name) == b"encoded"
    assert media_type(name) == content_type


def test_expired_url_is_not_found(store):
    store.save(KEY, 0, b"x")
    name = f"{KEY}-0.png"
    past = int(time.time()) - 1
    with pytest.raises(ResultNotFound):
        store.read_signed(name, past, store.signer.signature(name, past))


@pytest.mark.parametrize("name", ["../server.db", "..%2Fserver.db", f"{KEY}-0.png/..", "x.png", f"{KEY}-0.PNG"])
def test_names_outside_the_pattern_never_touch_the_disk(store, name):
    future = int(time.time()) + 60
    with pytest.raises(ResultNotFound):
        store.read_signed(name, future, store.signer.signature(name, future))


def test_clean_up_removes_only_expired_files(store):
    store.save(KEY, 0, b"old")
    store.save(KEY, 1, b"new")
    old = store.directory / f"{KEY}-0.png"
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_expired() == 1
    assert not old.exists() and (store.directory / f"{KEY}-1.png").exists()


def test_secret_is_created_once_and_kept(tmp_path):
    path = tmp_path / "secret.key"
    first = load_or_create_secret(path)
    assert len(first) == 64 and load_or_create_secret(path) == first
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_periodic_clean_up_runs_until_cancelled(store):
    import asyncio

    old = store.directory / f"{KEY}-0.png"

    async def scenario():
        task = asyncio.create_task(remove_expired_periodically(store, 0.01, "results"))
        for _ in range(500):
            if not old.exists():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled()

    store.save(KEY, 0, b"old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert asyncio.run(scenario()) is True
    assert not old.exists()


def test_results_are_private_files_in_a_private_directory(store, tmp_path):
    os.umask(0o022)
    name = store.save(KEY, 0, b"png")
    assert (tmp_path / "results").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "results" / name).stat().st_mode & 0o777 == 0o600


def test_a_link_planted_in_the_results_is_neither_read_nor_written_through(store, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not yours")
    name = f"{KEY}-0.png"
    (tmp_path / "results" / name).symlink_to(secret)
    expires = int(time.time()) + 60
    with pytest.raises(ResultNotFound):
        store.read_signed(name, expires, store.signer.signature(name, expires))
    with pytest.raises(ResultNotFound):
        store.read(name)
    (tmp_path / "results" / f".{name}.tmp").symlink_to(secret)  # a planted temporary file too
    store.save(KEY, 0, b"new result")
    assert secret.read_bytes() == b"not yours"
    assert not (tmp_path / "results" / name).is_symlink()
    assert store.read(name) == b"new result"
