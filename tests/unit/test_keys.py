from qwen_image_server.keys import KeyStore, hash_key


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


def test_revoked_key_stops_verifying_at_once_and_stays_listed(tmp_path):
    store = KeyStore(tmp_path / "db.sqlite")
    kept, revoked = store.create("kept"), store.create("gone")
    revoked_id = store.verify(revoked)
    assert store.revoke(revoked_id)
    assert store.verify(revoked) is None and store.verify(kept) is not None
    assert not store.is_active(revoked_id) and store.is_active(store.verify(kept))
    assert not store.revoke(revoked_id), "a revoked key cannot be revoked twice"
    listed = {key.name: key for key in store.list()}
    assert listed["gone"].revoked_at is not None and listed["kept"].revoked_at is None
    assert store.count() == 1


def test_a_key_table_from_before_revocation_gains_it(tmp_path):
    import sqlite3
    from contextlib import closing

    path = tmp_path / "db.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE api_keys (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL, name TEXT NOT NULL, "
                           "created_at REAL NOT NULL)")
        connection.execute("INSERT INTO api_keys VALUES ('old', ?, 'old', 1.0)", (hash_key("sk-old"),))
        connection.commit()
    store = KeyStore(path)
    assert store.verify("sk-old") == "old"
    assert store.revoke("old") and store.verify("sk-old") is None


def test_the_key_database_is_private(tmp_path):
    KeyStore(tmp_path / "data" / "db.sqlite").create()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "db.sqlite").stat().st_mode & 0o777 == 0o600
