"""JSON bodies: the structural check stops at the first excess, and pydantic's parser refuses what JSON allows
but a request cannot mean."""

from __future__ import annotations

import time

import pytest
from fastapi.exceptions import RequestValidationError

from qwen_image_server.api.bodies import MAX_CONTAINER_ITEMS, MAX_DEPTH, check_shape, parse_json
from qwen_image_server.api.dashscope.protocol import GenerationRequest
from qwen_image_server.errors import InvalidParameter


def request(content: str, parameters: str = "{}") -> bytes:
    return (f'{{"model": "qwen-image-2.0", "input": {{"messages": [{{"role": "user", "content": [{content}]}}]}}, '
            f'"parameters": {parameters}}}').encode()


def test_a_body_of_millions_of_items_is_refused_after_reading_only_its_start():
    body = request(",".join(['{"text": "a"}'] * 2_000_000))
    started = time.perf_counter()
    with pytest.raises(InvalidParameter, match=f"more than {MAX_CONTAINER_ITEMS} items"):
        parse_json(GenerationRequest, body)
    assert time.perf_counter() - started < 0.5


def test_deep_nesting_is_refused():
    with pytest.raises(InvalidParameter, match=f"deeper than {MAX_DEPTH}"):
        check_shape(b"[" * 100_000 + b"]" * 100_000)


def test_an_ordinary_request_parses():
    parsed = parse_json(GenerationRequest, request('{"image": "data:,"}, {"text": "a hat"}', '{"n": 2, "seed": 7}'))
    assert parsed.parameters.n == 2 and parsed.input.messages is not None


@pytest.mark.parametrize("parameters", ['{"n": true}', '{"seed": false}', '{"n": 1.5}'])
def test_booleans_and_fractions_are_not_integers(parameters):
    with pytest.raises(RequestValidationError) as caught:
        parse_json(GenerationRequest, request('{"text": "x"}', parameters))
    assert caught.value.errors()[0]["loc"][:2] == ("body", "parameters")


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"', '"\\ud83d"'])
def test_a_lone_surrogate_is_invalid_json(text):
    with pytest.raises(RequestValidationError) as caught:
        parse_json(GenerationRequest, request(f'{{"text": {text}}}'))
    assert caught.value.errors()[0]["type"] == "json_invalid"


def test_a_surrogate_pair_is_an_ordinary_character():
    parsed = parse_json(GenerationRequest, request('{"text": "\\ud83d\\ude00"}'))
    assert parsed.input.messages[0].content[0].text == "\U0001f600"
