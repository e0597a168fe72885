"""Signed result URLs and API keys against the real server, with the result files of a real generation.

Every altered URL (expired, any one character of name, expiry or signature changed, signatures moved or
repeated, traversal in each spelling) is the same detail-free 404 in the API's format, and no file outside the
results directory is opened (a process audit hook watches ``open``). Every bad ``Authorization`` header is the
same 401 body.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from qwen_image_server import keys as keys_module
from qwen_image_server.keys import KeyStore

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
HEX = "0123456789abcdef"
VARYING_HEADERS = {"date", "x-request-id"}
RESULT_FILE = re.compile(r"\.?[0-9a-f]{32}-[0-9]{1,2}\.(png|jpg|webp)(\.tmp)?")


class OpenedFiles:
    """Paths opened by this process while ``watching``: an audit hook cannot be removed, so it idles otherwise."""

    def __init__(self) -> None:
        self.watching = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.watching and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            self.paths.append(os.fsdecode(args[0]))


@pytest.fixture(scope="module")
def opened_files() -> OpenedFiles:
    return OpenedFiles()


@pytest.fixture(scope="module")
def result(server) -> dict[str, str]:
    body = {"model": "qwen-image-2.0", "input": {"messages": [{"role": "user", "content": [{"text": "a lamp"}]}]},
            "parameters": {"size": "512*512", "prompt_extend": False}}
    with server.client() as client:
        reply = client.post(ROUTE, json=body)
    assert reply.status_code == 200, reply.text
    url = reply.json()["output"]["choices"][0]["message"]["content"][0]["image"]
    split = urlsplit(url)
    query = parse_qs(split.query)
    name = split.path.rsplit("/", 1)[1]
    assert (server.app.state.results.directory / name).is_file()
    return {"url": url, "name": name, "expires": query["Expires"][0], "signature": query["Signature"][0]}


def raw(server, target: str, method: str = "GET", authorization: str | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    """Sends ``target`` and the header byte for byte (httpx would normalise dot segments, encodings, spaces)."""
    host, port = urlsplit(server.url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        if authorization is not None:
            connection.putheader("Authorization", authorization)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def one_character_changes(text: str, alphabet: str) -> Iterator[str]:
    for index, char in enumerate(text):
        replacement = alphabet[(alphabet.index(char) + 1) % len(alphabet)] if char in alphabet else alphabet[0]
        yield text[:index] + replacement + text[index + 1:]


def bad_targets(server, result) -> list[str]:
    name, expires, signature = result["name"], result["expires"], result["signature"]
    stem = name.rsplit(".", 1)[0]
    signer = server.app.state.results.signer
    past = int(time.time()) - 1

    def target(path_name: str, query: str | None = None) -> str:
        return f"/results/{path_name}?" + (query if query is not None else f"Expires={expires}&Signature={signature}")

    def signed(path_name: str) -> str:  # a name signed with the real secret: refused by its shape alone
        signature_for_it = signer.signature(path_name, int(expires))
        return f"/results/{quote(path_name, safe='')}?Expires={expires}&Signature={signature_for_it}"

    targets = [f"/results/{name}?Expires={past}&Signature={signer.signature(name, past)}",  # expired, well signed
               target(name, f"Expires={expires}"), target(name, f"Signature={signature}"), target(name, ""),
               target(name, f"Expires={expires}&Signature="), target(name, f"Expires=&Signature={signature}"),
               target(name, f"Expires={expires}&Signature={signature.upper()}"),
               target(name, f"Expires={expires}&Signature={signature[:-1]}"),
               target(name, f"Expires={expires}&Signature={signature}0"),
               target(name, f"Expires={int(expires) + 1}&Signature={signature}"),
               target(name, f"Expires=-{expires}&Signature={signature}"),
               target(name, f"Expires={expires}.0&Signature={signature}"),
               target(name, f"Expires=%C2%B2&Signature={signature}"),  # superscript two: isdigit(), not int()
               target(name, f"Expires=%D9%A1%D9%A2&Signature={signature}"),  # Arabic-Indic digits
               target(name, f"Expires={expires}&Signature=%C3%A9{signature[2:]}"),  # non-ASCII signature
               target(name, f"Expires={expires}&Signature=%00{signature[1:]}"),
               # the signature moved or repeated
               f"/results/{signature}/{name}?Expires={expires}", f"/results/{name}/{signature}?Expires={expires}",
               target(name, f"Expires={expires}&Signature={signature}&Signature={'0' * 64}"),
               target(name, f"Expires={expires}&Signature={'0' * 64}&Signature={signature}"),
               target(name, f"Expires={expires}&Expires={past}&Signature={signature}"),
               target(name, f"Expires={expires}#Signature={signature}"),
               target(name, f"Expires={expires}%26Signature={signature}"),
               target(name, f"Expires={expires}&signature={signature}"),
               target(f"{name};Signature={signature}", f"Expires={expires}")]
    targets += [target(changed) for changed in one_character_changes(stem, HEX + "-0123456789")]
    targets += [target(f"{stem}.{other}") for other in ("jpg", "webp", "PNG", "png.html", "svg", "html")]
    targets += [target(name, f"Expires={changed}&Signature={signature}")
                for changed in one_character_changes(expires, "0123456789")]
    targets += [target(name, f"Expires={expires}&Signature={changed}")
                for changed in one_character_changes(signature, HEX)]
    # traversal, in every spelling, with and without a valid signature for the spelled name
    for path_name in ("../server.db", "..%2Fserver.db", "%2e%2e%2fserver.db", "%2E%2E/%2E%2E/etc/passwd",
                      "..%5cserver.db", "..\\server.db", "%252e%252e%252fserver.db", "..%252fserver.db",
                      "....//server.db", "%2fetc%2fpasswd", "/etc/passwd", "%5cetc%5cpasswd", "C:%5cWindows",
                      f"{name}%00", f"{name}%00.png", f"{name}%0a", f"..%2F{name}", f"./{name}", f"%2e/{name}",
                      f"..%2Fresults%2F{name}", f"{name}%20", f"%20{name}",
                      f"{name}.", f"{name}::$DATA", f"{stem}-0.png%2F..%2F..%2Fserver.db"):
        targets.append(target(path_name))
    for path_name in ("../server.db", "..\\server.db", "/etc/passwd", f"{name}\n", f"{name}\x00", f"./{name}",
                      f"{stem}-0.PNG", f"{stem}-0.html", f"{stem.upper()}-0.png"):
        targets.append(signed(path_name))
    return targets


def assert_not_found(status: int, headers: dict[str, str], body: bytes, target: str) -> None:
    assert status == 404, (target, status, body[:200])
    payload = json.loads(body)
    assert set(payload) == {"request_id", "code", "message"}, (target, payload)
    assert payload["code"] == "NotFound" and payload["message"] in {"Not found.", "Not Found"}, (target, payload)
    assert headers["content-type"] == "application/json"


def test_every_altered_url_is_the_same_404_and_opens_nothing_outside_results(server, result, opened_files):
    targets = bad_targets(server, result)
    assert len(targets) > 150
    good = urlsplit(result["url"])
    opened_files.watching = True
    try:
        answers = [(target, *raw(server, target)) for target in targets]
        assert raw(server, f"{good.path}?{good.query}")[0] == 200  # control: the hook sees the server's opens
    finally:
        opened_files.watching = False
    for target, status, headers, body in answers:
        assert_not_found(status, headers, body, target)
    data_dir = str(server.settings.data_dir.resolve())
    results_dir = os.path.realpath(server.app.state.results.directory)
    opened = [os.path.realpath(path) for path in opened_files.paths]
    assert os.path.join(results_dir, result["name"]) in opened
    # under the data dir, only result files (a worker finishing an earlier test's task may write one)
    assert all(os.path.dirname(path) == results_dir and RESULT_FILE.fullmatch(os.path.basename(path))
               for path in opened if path.startswith(data_dir)), opened
    assert all(path.endswith((".py", ".pyc")) for path in opened if not path.startswith(data_dir)), opened


def test_the_real_url_serves_a_fixed_image_type_and_head_matches_get(server, result):
    path = urlsplit(result["url"])._replace(scheme="", netloc="").geturl()
    got_status, got_headers, got_body = raw(server, path)
    head_status, head_headers, head_body = raw(server, path, "HEAD")
    assert got_status == head_status == 200
    assert got_body.startswith(b"\x89PNG\r\n\x1a\n") and head_body == b""
    assert got_headers["content-type"] == "image/png"
    assert got_headers["x-content-type-options"] == "nosniff"
    assert got_headers["content-security-policy"] == "default-src 'none'"
    assert int(got_headers["content-length"]) == len(got_body)
    assert strip(got_headers) == strip(head_headers)


@pytest.mark.parametrize("suffix", ["", "&Signature=0", "#x"])
def test_head_and_get_agree_on_refusals(server, result, suffix):
    target = f"/results/{result['name']}?Expires={result['expires']}&Signature={'0' * 64}{suffix}"
    got, head = raw(server, target), raw(server, target, "HEAD")
    assert got[0] == head[0] == 404 and head[2] == b""
    assert strip(got[1]) == strip(head[1])


def strip(headers: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key not in VARYING_HEADERS}


@pytest.mark.parametrize("slash", ["/", "%2F", "%2f"])
def test_a_trailing_slash_is_not_found_and_never_redirected(server, result, slash):
    """No redirect_slashes: a result URL with a slash after the name names no result, even validly signed."""
    query = f"Expires={result['expires']}&Signature={result['signature']}"
    path = f"/results/{result['name']}{slash}"
    status, headers, body = raw(server, f"{path}?{query}")
    assert status == 404 and "location" not in headers
    assert json.loads(body)["code"] == "NotFound"


def test_the_content_type_does_not_follow_the_request(server, result):
    reply = httpx.get(result["url"], headers={"Accept": "text/html", "Range": "bytes=0-3"})
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["x-content-type-options"] == "nosniff"


# --- API keys --------------------------------------------------------------------------------------------------


def bad_authorizations(key: str) -> list[str | None]:
    wrong_same_length = key[:-1] + ("A" if key[-1] != "A" else "B")
    return [None, "", " ", "Bearer", "Bearer ", "Bearer  ", "bearer", f"Bearer {wrong_same_length}",
            f"Bearer {key}x", f"Bearer {key[:-1]}", "Bearer sk-", "Bearer x", f"bearer {wrong_same_length}",
            f"BEARER {wrong_same_length}", f"Bearer   {wrong_same_length}  ", f"Basic {key}",
            "Basic " + base64.b64encode(f"user:{key}".encode()).decode(), key, f"Token {key}",
            f"Bearer {key} {key}", f"Bearer\t{key}", f"Bearer {key},", f"Bearer {'x' * 8000}",
            f"Bearer {key.upper()}", f"Bearer {hashlib.sha256(key.encode()).hexdigest()}"]


def unauthorised_body(answer: tuple[int, dict[str, str], bytes]) -> dict:
    status, headers, body = answer
    assert status == 401, body
    payload = json.loads(body)
    if "request_id" in payload:
        assert payload.pop("request_id") == headers["x-request-id"]
    return payload


def get_with(server, path: str, authorization: str | None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return raw(server, path, method, authorization=authorization)


def test_every_bad_key_gets_the_same_401(server):
    bodies = [unauthorised_body(get_with(server, "/api/v1/tasks", header)) for header in bad_authorizations(server.key)]
    assert bodies[0] == {"code": "InvalidApiKey", "message": "Invalid API-key provided."}
    assert all(body == bodies[0] for body in bodies)


def test_every_bad_key_gets_the_same_401_on_openai_paths(server):
    bodies = [unauthorised_body(get_with(server, "/v1/images/generations", header, "POST"))
              for header in bad_authorizations(server.key)]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("length", [20_000, 200_000])
def test_a_key_past_the_header_limit_is_refused_without_a_5xx(server, length):
    """h11 caps a request head at 16 KiB: uvicorn answers 4xx or drops the connection, and keeps serving."""
    try:
        status, _, _ = get_with(server, "/api/v1/tasks", "Bearer " + "x" * length)
        assert 400 <= status < 500
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        pass
    assert get_with(server, "/api/v1/tasks", f"Bearer {server.key}")[0] == 200


@pytest.mark.parametrize("spelling", ["Bearer {key}", "bearer {key}", "BEARER {key}", "Bearer   {key}  "])
def test_the_scheme_is_case_insensitive_and_spaces_around_the_key_are_ignored(server, spelling):
    """RFC 7235: the auth scheme is case-insensitive. The key itself is compared exactly."""
    assert get_with(server, "/api/v1/tasks", spelling.format(key=server.key))[0] == 200


def test_keys_are_compared_as_fixed_length_hashes_against_every_stored_key(tmp_path, monkeypatch):
    """No early exit by length or on a match: each check compares the presented key's SHA-256 with every stored
    hash through ``hmac.compare_digest`` (the code path, not timings)."""
    store = KeyStore(tmp_path / "keys.db")
    keys = [store.create(f"k{index}") for index in range(3)]
    calls: list[tuple[str, str]] = []
    real = keys_module.hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", recording)
    wrong_same_length = keys[0][:-1] + ("A" if keys[0][-1] != "A" else "B")
    for presented, expected in [(keys[0], True), (keys[2], True), (wrong_same_length, False), ("x", False),
                                (keys[0] + "x" * 10_000, False), ("", False)]:
        calls.clear()
        assert (store.verify(presented) is not None) is expected
        assert len(calls) == len(keys)
        assert all(len(a) == len(b) == 64 for a, b in calls)
        assert {a for a, _ in calls} == {hashlib.sha256(presented.encode()).hexdigest()}


def test_a_name_with_a_trailing_newline_never_reaches_the_disk(server, result):
    """``$`` matches before a final newline: with ``re.match`` a validly signed "<name>\\n" passed the name check,
    reached the disk and was a 500 (no content type for "png\\n"). A file of that name exists here, so only the
    pattern can refuse it."""
    store = server.app.state.results
    sneaky = result["name"] + "\n"
    (store.directory / sneaky).write_bytes(b"<script>alert(1)</script>")
    try:
        expires = int(result["expires"])
        signature = store.signer.signature(sneaky, expires)
        target = f"/results/{quote(sneaky, safe='')}?Expires={expires}&Signature={signature}"
        assert_not_found(*raw(server, target), target)
    finally:
        (store.directory / sneaky).unlink()
