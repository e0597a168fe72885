"""The upload store: signed policies, what a form may do with one, and who may read the stored bytes."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from qwen_image_server.errors import AccessDenied, InvalidParameter
from qwen_image_server.media.uploads import (
    ACCESS_KEY_ID,
    UploadConflict,
    UploadForm,
    UploadQuotaExceeded,
    UploadStore,
)

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_store(tmp_path, clock, secret: bytes = b"s" * 32) -> UploadStore:
    return UploadStore(tmp_path / "uploads", tmp_path / "server.db", secret, ttl_seconds=48 * HOUR,
                       policy_seconds=300, max_bytes=1000, capacity_bytes=2500, clock=clock)


@pytest.fixture
def store(tmp_path, clock) -> UploadStore:
    return make_store(tmp_path, clock)


def form_for(store: UploadStore, name: str = "photo.png", owner: str = "key-1", model: str = "m") -> UploadForm:
    grant = store.grant(owner, model)
    return UploadForm(f"{grant.upload_dir}/{name}", grant.policy, grant.signature, ACCESS_KEY_ID, "private", "true")


def upload(store: UploadStore, form: UploadForm, data: bytes = b"image bytes") -> str:
    return store.store(store.authorize(form, len(data)), data)


def test_an_upload_resolves_for_its_key_and_model(store):
    form = form_for(store)
    reference = upload(store, form)
    assert reference == "oss://" + form.key
    assert form.key.startswith("dashscope-instant/") and form.key.endswith("/photo.png")
    assert store.resolve(reference, "key-1", "m") == b"image bytes"


def test_policy_names_its_folder_size_and_binding(store):
    grant = store.grant("key-1", "m")
    document = json.loads(base64.b64decode(grant.policy))
    assert ["starts-with", "$key", grant.upload_dir + "/"] in document["conditions"]
    assert ["content-length-range", 0, 1000] in document["conditions"]
    assert (document["owner"], document["model"]) == ("key-1", "m")
    assert store.grant("key-1", "m").upload_dir != grant.upload_dir


def test_other_keys_and_models_cannot_read_an_upload(store):
    reference = upload(store, form_for(store))
    with pytest.raises(InvalidParameter, match="does not exist or has expired"):
        store.resolve(reference, "key-2", "m")
    with pytest.raises(InvalidParameter, match="uploaded for model m"):
        store.resolve(reference, "key-1", "other-model")
    with pytest.raises(InvalidParameter, match="does not exist"):
        store.resolve(reference + "x", "key-1", "m")


@pytest.mark.parametrize("tamper", [
    lambda form: replace(form, signature=base64.b64encode(b"x" * 32).decode()),
    lambda form: replace(form, access_key_id="someone"),
    lambda form: replace(form, policy=base64.b64encode(
        base64.b64decode(form.policy).replace(b'"key-1"', b'"key-2"')).decode()),
])
def test_a_tampered_form_is_refused(store, tamper):
    with pytest.raises(AccessDenied):
        store.authorize(tamper(form_for(store)), 10)


def test_a_policy_signed_with_another_secret_is_refused(tmp_path, clock, store):
    other = make_store(tmp_path / "other", clock, secret=b"t" * 32)
    with pytest.raises(AccessDenied, match="signature"):
        store.authorize(form_for(other), 10)


def test_an_expired_policy_is_refused_as_hosted(store, clock):
    form = form_for(store)
    clock.now += 301
    with pytest.raises(AccessDenied, match=r"Invalid according to Policy: Policy expired\."):
        store.authorize(form, 10)


@pytest.mark.parametrize("key", ["elsewhere/photo.png", "{dir}/../photo.png", "{dir}/sub/photo.png", "{dir}/",
                                 "{dir}/..", "{dir}/a\\b.png", "{dir}/bad\nname.png", "{dir}x/photo.png"])
def test_keys_outside_the_policy_folder_are_refused(store, key):
    form = form_for(store)
    upload_dir = form.key.rsplit("/", 1)[0]
    with pytest.raises(AccessDenied, match="inside upload_dir"):
        store.authorize(replace(form, key=key.format(dir=upload_dir)), 10)


def test_acl_and_overwrite_fields_must_match_the_policy(store):
    with pytest.raises(AccessDenied):
        store.authorize(replace(form_for(store), object_acl="public-read"), 10)
    with pytest.raises(AccessDenied):
        store.authorize(replace(form_for(store), forbid_overwrite="false"), 10)


def test_size_is_bounded_by_the_policy(store):
    with pytest.raises(InvalidParameter, match="at most 1000"):
        store.authorize(form_for(store), 1001)


def test_same_key_takes_the_same_bytes_again_but_not_other_bytes(store):
    form = form_for(store)
    assert upload(store, form, b"one") == upload(store, form, b"one")
    with pytest.raises(UploadConflict):
        upload(store, form, b"two")
    assert store.resolve("oss://" + form.key, "key-1", "m") == b"one"
    assert len(list(store.directory.iterdir())) == 1


def test_uploads_expire_after_the_ttl_and_are_removed(store, clock):
    reference = upload(store, form_for(store))
    clock.now += 47 * HOUR
    assert store.remove_expired() == 0
    assert store.resolve(reference, "key-1", "m") == b"image bytes"
    clock.now += 2 * HOUR
    with pytest.raises(InvalidParameter, match="expired"):
        store.resolve(reference, "key-1", "m")
    assert store.remove_expired() == 1
    assert list(store.directory.iterdir()) == []


def test_uploads_survive_a_restart(tmp_path, clock, store):
    reference = upload(store, form_for(store))
    assert make_store(tmp_path, clock).resolve(reference, "key-1", "m") == b"image bytes"


def test_a_key_is_held_to_its_capacity_until_its_uploads_expire(store, clock):
    for name in ("a.png", "b.png"):
        upload(store, form_for(store, name), b"x" * 1000)
    with pytest.raises(UploadQuotaExceeded):
        upload(store, form_for(store, "c.png"), b"x" * 1000)
    upload(store, form_for(store, "d.png", owner="key-2"), b"x" * 1000)  # other keys have their own
    upload(store, form_for(store, "e.png"), b"x" * 500)  # what still fits
    assert len(list(store.directory.iterdir())) == 4  # the refused file is not left behind
    clock.now += 49 * HOUR
    upload(store, form_for(store, "f.png"), b"x" * 1000)
