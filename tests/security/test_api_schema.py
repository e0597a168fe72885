"""Schemathesis against our own OpenAPI schema, served by a real server on loopback.

Every operation is fuzzed with schema-valid and schema-invalid requests; each answer must not be a 5xx
and must match the schema: a documented status code, its content type, a body of its model, its headers.
The CI run is bounded (``QIS_FUZZ_EXAMPLES`` cases per operation and phase, default 10); a longer run is
``QIS_FUZZ_EXAMPLES=500 python -m pytest tests/security/test_api_schema.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from qwen_image_server.settings import MiB
from tests.conftest import RunningServer, free_socket, serving

EXAMPLES = int(os.environ.get("QIS_FUZZ_EXAMPLES", "10"))
SERVED_MODEL = "qwen-image-2.0"  # text-to-image in ~0.4 s at 512*512 with the demo weights
CHEAP_SIZE = "512*512"
PHASES = os.environ.get("QIS_FUZZ_PHASES", "examples,coverage,fuzzing").split(",")

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
    checks.unsupported_method,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path) -> Iterator[RunningServer]:
    """Cheap to fuzz: a short queue, short fetch timeouts, small bodies; no rate limits, so requests get past them."""
    with serving(tmp_path_factory.mktemp("fuzz-data"), demo_models_dir, free_socket(), rate_limits_enabled=False,
                 max_pending_tasks=2, fetch_connect_timeout=1, fetch_total_timeout=2, max_request_bytes=1 * MiB,
                 max_image_bytes=1 * MiB) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RunningServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    schema.config.update(headers={"Authorization": f"Bearer {fuzz_server.key}"}, request_timeout=60)
    schema.config.generation.update(max_examples=EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    no_shrink=True, deterministic=True)
    schema.config.phases.update(phases=PHASES)
    schema.hook(before_generate_case)
    return schema


def before_generate_case(context: schemathesis.HookContext, cases: st.SearchStrategy[schemathesis.Case],
                         ) -> st.SearchStrategy[schemathesis.Case]:
    """Random model names stop at 404 ModelNotFound; half the schema-valid generation bodies name a served
    model at a cheap size instead, so the fuzz reaches the parameter rules and the engine behind them."""
    if context.operation is None or context.operation.method != "post" or ("images" not in context.operation.path \
            and "aigc" not in context.operation.path):
        return cases
    return st.tuples(cases, st.booleans()).map(lambda pair: with_served_model(*pair))


def with_served_model(case: schemathesis.Case, use_served: bool) -> schemathesis.Case:
    if use_served and case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE \
            and isinstance(case.body, dict):
        case.body["model"] = SERVED_MODEL
        parameters = case.body.get("parameters")
        if isinstance(parameters, dict):
            parameters["size"] = CHEAP_SIZE
        elif "prompt" in case.body:
            case.body["size"] = CHEAP_SIZE.replace("*", "x")
    return case


@pytest.fixture(scope="module")
def tally(api_schema: schemathesis.BaseSchema) -> Iterator[Counter[tuple[str, str]]]:
    """Cases per operation and status class; afterwards, every operation must have been exercised."""
    counts: Counter[tuple[str, str]] = Counter()
    yield counts
    operations = {result.ok().label for result in api_schema.get_all_operations()}
    exercised = {label for label, _ in counts}
    print(f"\nschemathesis: {sum(counts.values())} cases over {len(exercised)} operations")
    for label in sorted(operations):
        by_status = {status: counts[(label, status)] for status in ("2xx", "4xx") if counts[(label, status)]}
        print(f"  {label:62} {by_status}")
    assert operations - exercised == set(), "operations never exercised"


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_within_its_schema(case: schemathesis.Case, tally: Counter[tuple[str, str]]) -> None:
    response = case.call_and_validate(checks=CHECKS)
    tally[(case.operation.label, f"{response.status_code // 100}xx")] += 1


# Regressions: the 5xx answers the fuzz found, each now a clear 4xx.

def test_a_page_number_past_sqlite_integers_is_a_400(fuzz_server: RunningServer) -> None:
    with fuzz_server.client() as client:
        response = client.get("/api/v1/tasks", params={"page_no": 1758748604739920402055168})
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidParameter"
    assert "page_no" in response.json()["message"]


def test_a_non_ascii_digit_expiry_is_a_404(fuzz_server: RunningServer) -> None:
    with fuzz_server.client() as client:
        response = client.get(f"/results/{'0' * 32}-0.png", params={"Expires": "²", "Signature": "0"})
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"


def test_a_wrong_method_is_told_every_method_the_path_serves(fuzz_server: RunningServer) -> None:
    with fuzz_server.client() as client:
        response = client.request("DELETE", "/api/v1/uploads")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
