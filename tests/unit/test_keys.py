from qwen_image_server.keys import KeyStore


def test_created_key_verifies_and_only_its_hash_is_stored(tmp_path):
    store = KeyStore(tmp_path / "db.sqlite")
    key = store.create("ci")
    assert key.startswith("sk-") and len(key) > 40
    assert store.verify(key) is not None
    assert key.encode() not in (tmp_path / "db.sqlite").read_bytes()


def test_wrong_and_empty_keys_do_not_verify(tmp_path):
    store = KeyStore(tmp_path / "db.sqlite")
    key = store.create()
    assert store.verify(key + "x") is None
    assert store.verify("") is None
    assert store.count() == 1


def test_each_key_has_its_own_id(tmp_path):
    store = KeyStore(tmp_path / "db.sqlite")
    first, second = store.create(), store.create()
    assert store.verify(first) != store.verify(second)
