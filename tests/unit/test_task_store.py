"""SqliteTaskStore on a real database file: queueing, batching, leases, ownership, listing and durability."""

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
from PIL import Image

from qwen_image_server.tasks.models import Job, NewTask, Quota, Refusal, TaskFailure, TaskFilter, TaskMode, TaskState
from qwen_image_server.tasks.sqlite import SqliteTaskStore

LEASE = 30.0
ROOMY = 1_000


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "db" / "tasks.sqlite3"


@pytest.fixture
def store(path, clock):
    return SqliteTaskStore(path, clock=clock)


def job(model="qwen-image"):
    return Job(model=model, prompt="p", width=256, height=256, seed=1)


def new_task(task_id, key_id="key-a", model="qwen-image", mode=TaskMode.ASYNC, batch_key=None, inputs=()):
    return NewTask(task_id=task_id, key_id=key_id, request_id=f"req-{task_id}", mode=mode, job=job(model),
                   inputs=list(inputs), batch_key=batch_key)


def submit(store, clock, *task_ids, **fields):
    """Creates the tasks one clock second apart, so submission order is unambiguous."""
    for task_id in task_ids:
        assert store.create(new_task(task_id, **fields), Quota(ROOMY)) is None
        clock.advance(1)


def state(store, task_id):
    return store.get(task_id).state


def ids(records):
    return [record.task_id for record in records]


def raw(path, sql, *values):
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql, values).fetchall()


def worker_of(path, task_id):
    return raw(path, "SELECT worker FROM tasks WHERE task_id = ?", task_id)[0][0]


def expire_and_reap(store, clock, max_attempts=3):
    clock.advance(LEASE + 1)
    return store.reap(max_attempts)


def test_create_stores_a_pending_task_with_its_inputs(store, clock):
    inputs = [b"first", b"\x00\xff\x00binary", b"third" * 1000]
    task = new_task("t1", mode=TaskMode.SYNC, batch_key="qwen-image|256x256|n=1", inputs=inputs)
    assert store.create(task, Quota(ROOMY)) is None

    record = store.get("t1")
    assert (record.task_id, record.key_id, record.request_id) == ("t1", "key-a", "req-t1")
    assert record.mode is TaskMode.SYNC
    assert record.model == "qwen-image"
    assert record.state is TaskState.PENDING
    assert record.batch_key == "qwen-image|256x256|n=1"
    assert record.attempt == 0
    assert record.submitted_at == clock.now
    assert record.started_at is None
    assert record.finished_at is None
    assert record.outputs == []
    assert store.inputs("t1") == inputs


def test_parameters_round_trip_through_json(store):
    original = Job(model="qwen-image", prompt="a cat", width=256, height=256, seed=1, n=2,
                   negative_prompt="blurry", prompt_extend=True)
    store.create(NewTask("t1", "key-a", "req", TaskMode.ASYNC, original, [], None), Quota(ROOMY))
    record = store.get("t1")
    assert record.parameters == original.parameters()
    assert Job.from_parameters(record.parameters, []) == original


def test_a_masked_job_stores_its_mask_as_the_last_input(store):
    image, mask = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (255, 255, 255))
    original = Job(model="qwen-image", prompt="a cat", width=256, height=256, seed=1, mask=mask,
                   output_format="webp", output_quality=80)
    store.create(NewTask("t1", "key-a", "req", TaskMode.SYNC, original, [b"image", b"mask"], None), Quota(ROOMY))
    record = store.get("t1")
    assert record.parameters["masked"] is True
    restored = Job.from_parameters(record.parameters, [image, mask])
    assert (restored.images, restored.mask, restored.output_format, restored.output_quality) == (
        [image], mask, "webp", 80)


def test_unknown_task_has_no_record_and_no_inputs(store):
    assert store.get("missing") is None
    assert store.inputs("missing") == []


def test_task_without_inputs_has_an_empty_input_list(store, clock):
    submit(store, clock, "t1")
    assert store.inputs("t1") == []


def test_create_refuses_once_max_pending_tasks_wait(store):
    assert store.create(new_task("t1"), Quota(2)) is None
    assert store.create(new_task("t2"), Quota(2)) is None
    assert store.create(new_task("t3", inputs=[b"x"]), Quota(2)) is Refusal.QUEUE_FULL
    assert store.get("t3") is None
    assert store.inputs("t3") == []
    assert store.count_pending() == 2


def test_only_pending_tasks_count_against_max_pending(store, clock):
    submit(store, clock, "t1", "t2")
    store.claim("w1", LEASE, max_batch=1)
    assert store.create(new_task("t3"), Quota(2)) is None
    assert store.create(new_task("t4"), Quota(2)) is Refusal.QUEUE_FULL


def test_duplicate_task_id_is_rejected_and_leaves_the_store_usable(store, clock):
    submit(store, clock, "t1")
    with pytest.raises(sqlite3.IntegrityError):
        store.create(new_task("t1", key_id="key-b", inputs=[b"other"]), Quota(ROOMY))
    assert store.get("t1").key_id == "key-a"
    assert store.inputs("t1") == []
    submit(store, clock, "t2")
    assert store.count_pending() == 2


def test_database_is_in_wal_mode(store, path):
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]


def test_claim_on_an_empty_queue_returns_nothing(store):
    assert store.claim("w1", LEASE, max_batch=4) == []


def test_claim_moves_the_oldest_task_to_running(store, clock):
    submit(store, clock, "t1", "t2")
    clock.advance(5)
    [claimed] = store.claim("w1", LEASE, max_batch=4)
    assert claimed.task_id == "t1"
    assert claimed.state is TaskState.RUNNING
    assert claimed.attempt == 1
    assert claimed.started_at == clock.now
    assert store.get("t1") == claimed
    assert worker_of(store.database, "t1") == "w1"
    assert state(store, "t2") is TaskState.PENDING


def test_claims_are_first_in_first_out(store, clock):
    submit(store, clock, "t1", "t2", "t3")
    assert [ids(store.claim("w1", LEASE, max_batch=4)) for _ in range(4)] == [["t1"], ["t2"], ["t3"], []]


def test_tasks_submitted_at_the_same_instant_are_claimed_in_submission_order(store):
    for task_id in ("b", "c", "a"):
        store.create(new_task(task_id), Quota(ROOMY))
    assert [ids(store.claim("w1", LEASE, max_batch=1)) for _ in range(3)] == [["b"], ["c"], ["a"]]


def test_claim_batches_the_oldest_with_tasks_of_the_same_batch_key(store, clock):
    for task_id, batch_key in [("a", "k1"), ("b", "k2"), ("c", "k1"), ("d", None), ("e", "k1"), ("f", "k1")]:
        submit(store, clock, task_id, batch_key=batch_key)
    claims = [ids(store.claim("w1", LEASE, max_batch=3)) for _ in range(5)]
    assert claims == [["a", "c", "e"], ["b"], ["d"], ["f"], []]


def test_every_task_of_a_batch_is_running_under_the_worker(store, clock):
    submit(store, clock, "a", "b", batch_key="k")
    batch = store.claim("w1", LEASE, max_batch=2)
    assert [(record.state, record.attempt, record.started_at) for record in batch] == \
        [(TaskState.RUNNING, 1, clock.now)] * 2
    assert {worker_of(store.database, task_id) for task_id in ("a", "b")} == {"w1"}


def test_task_without_batch_key_is_claimed_alone(store, clock):
    submit(store, clock, "a", "b", "c")
    submit(store, clock, "d", batch_key="k")
    assert ids(store.claim("w1", LEASE, max_batch=4)) == ["a"]


def test_batch_key_of_a_later_task_does_not_pull_in_unkeyed_ones(store, clock):
    submit(store, clock, "a", batch_key="k")
    submit(store, clock, "b")
    submit(store, clock, "c", batch_key="k")
    assert ids(store.claim("w1", LEASE, max_batch=4)) == ["a", "c"]


def test_max_batch_one_claims_a_single_task(store, clock):
    submit(store, clock, "a", "b", "c", batch_key="k")
    assert ids(store.claim("w1", LEASE, max_batch=1)) == ["a"]
    assert store.count_pending() == 2


def test_concurrent_claims_from_separate_stores_take_every_task_exactly_once(path, clock):
    setup = SqliteTaskStore(path, clock=clock)
    task_ids = [f"t{number:02}" for number in range(50)]
    for number, task_id in enumerate(task_ids):
        setup.create(new_task(task_id, batch_key=f"k{number % 3}" if number % 2 else None), Quota(ROOMY))
    stores = [SqliteTaskStore(path, clock=clock) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def drain(worker, store):
        start.wait()
        claimed = []
        while batch := store.claim(worker, LEASE, max_batch=3):
            claimed += [(worker, record.task_id) for record in batch]
        return claimed

    with ThreadPoolExecutor(len(stores)) as pool:
        futures = [pool.submit(drain, f"w{number}", store) for number, store in enumerate(stores)]
        claims = [claim for future in futures for claim in future.result()]

    claimed_ids = [task_id for _, task_id in claims]
    assert sorted(claimed_ids) == task_ids
    for worker, task_id in claims:
        record = setup.get(task_id)
        assert (record.state, record.attempt) == (TaskState.RUNNING, 1)
        assert worker_of(path, task_id) == worker


def test_expired_lease_is_requeued_and_the_next_claim_is_a_second_attempt(store, clock):
    submit(store, clock, "t1", inputs=[b"image"])
    store.claim("w1", LEASE, max_batch=1)
    store.progress(["t1"], "w1", 3, 10)
    assert expire_and_reap(store, clock) == (1, 0)

    record = store.get("t1")
    assert record.state is TaskState.PENDING
    assert (record.progress_step, record.progress_total) == (None, None)
    assert worker_of(store.database, "t1") is None
    assert store.inputs("t1") == [b"image"]

    [again] = store.claim("w2", LEASE, max_batch=1)
    assert (again.task_id, again.attempt, again.started_at) == ("t1", 2, clock.now)


def test_live_lease_is_not_reaped(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    clock.advance(LEASE - 1)
    assert store.reap(max_attempts=3) == (0, 0)
    assert state(store, "t1") is TaskState.RUNNING


def test_heartbeat_renews_the_owners_lease(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    clock.advance(LEASE - 5)
    store.heartbeat(["t1"], "w1", LEASE)
    clock.advance(10)
    assert store.reap(max_attempts=3) == (0, 0)
    assert state(store, "t1") is TaskState.RUNNING
    assert expire_and_reap(store, clock) == (1, 0)


def test_heartbeat_from_another_worker_does_not_renew(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    clock.advance(LEASE - 5)
    store.heartbeat(["t1"], "w2", LEASE)
    clock.advance(10)
    assert store.reap(max_attempts=3) == (1, 0)


def test_heartbeat_renews_only_the_tasks_the_worker_holds(store, clock):
    submit(store, clock, "a", "b")
    store.claim("w1", LEASE, max_batch=1)
    store.claim("w2", LEASE, max_batch=1)
    clock.advance(LEASE - 5)
    store.heartbeat(["a", "b"], "w1", LEASE)
    clock.advance(10)
    assert store.reap(max_attempts=3) == (1, 0)
    assert (state(store, "a"), state(store, "b")) == (TaskState.RUNNING, TaskState.PENDING)


def test_heartbeat_and_progress_with_no_tasks_do_nothing(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    store.heartbeat([], "w1", LEASE)
    store.progress([], "w1", 1, 2)
    assert store.get("t1").progress_step is None


def test_task_out_of_attempts_is_failed_by_the_reaper(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    results = []
    for _ in range(3):
        store.claim("w1", LEASE, max_batch=1)
        results.append(expire_and_reap(store, clock, max_attempts=3))
    assert results == [(1, 0), (1, 0), (0, 1)]

    record = store.get("t1")
    assert record.state is TaskState.FAILED
    assert record.attempt == 3
    assert (record.error_code, record.error_status) == ("InternalError", 500)
    assert "3" in record.error_message
    assert record.finished_at == clock.now
    assert store.claim("w1", LEASE, max_batch=1) == []
    assert not store.succeed("t1", "w1", ["late.png"], None)
    assert store.inputs("t1") == [] and worker_of(store.database, "t1") is None


def test_reap_counts_requeued_and_failed_tasks_separately(store, clock):
    submit(store, clock, "spent", "fresh", "alive")
    store.claim("w1", LEASE, max_batch=1)
    expire_and_reap(store, clock, max_attempts=2)
    store.claim("w1", LEASE, max_batch=1)
    store.claim("w1", LEASE, max_batch=1)
    assert [store.get(task_id).attempt for task_id in ("spent", "fresh")] == [2, 1]
    clock.advance(LEASE + 1)
    store.claim("w2", LEASE, max_batch=1)
    assert store.reap(max_attempts=2) == (1, 1)
    assert [state(store, task_id) for task_id in ("spent", "fresh", "alive")] == \
        [TaskState.FAILED, TaskState.PENDING, TaskState.RUNNING]


def test_success_stores_outputs_and_drops_inputs(store, clock):
    submit(store, clock, "t1", inputs=[b"a", b"b"])
    store.claim("w1", LEASE, max_batch=1)
    clock.advance(7)
    assert store.succeed("t1", "w1", ["t1-0.png", "t1-1.png"], "an extended prompt")

    record = store.get("t1")
    assert record.state is TaskState.SUCCEEDED
    assert record.outputs == ["t1-0.png", "t1-1.png"]
    assert record.actual_prompt == "an extended prompt"
    assert record.finished_at == clock.now
    assert record.error_code is None
    assert store.inputs("t1") == []
    assert raw(store.database, "SELECT COUNT(*) FROM task_inputs") == [(0,)]


def test_failure_stores_code_status_and_message_and_drops_inputs(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    store.claim("w1", LEASE, max_batch=1)
    assert store.fail("t1", "w1", TaskFailure("InvalidParameter", 400, "the image is too small"))

    record = store.get("t1")
    assert record.state is TaskState.FAILED
    assert (record.error_code, record.error_status, record.error_message) == \
        ("InvalidParameter", 400, "the image is too small")
    assert record.finished_at == clock.now
    assert record.outputs == []
    assert store.inputs("t1") == []


def test_only_the_owner_can_finish_a_running_task(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    store.claim("w1", LEASE, max_batch=1)
    assert not store.succeed("t1", "w2", ["x.png"], None)
    assert not store.fail("t1", "w2", TaskFailure("InternalError", 500, "boom"))
    assert state(store, "t1") is TaskState.RUNNING
    assert store.inputs("t1") == [b"a"]


def test_pending_task_cannot_be_finished(store, clock):
    submit(store, clock, "t1")
    assert not store.succeed("t1", "w1", ["x.png"], None)
    assert not store.fail("t1", "w1", TaskFailure("InternalError", 500, "boom"))
    assert state(store, "t1") is TaskState.PENDING


def test_finished_task_cannot_be_finished_again(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    assert store.succeed("t1", "w1", ["first.png"], "first")
    assert not store.succeed("t1", "w1", ["second.png"], "second")
    assert not store.fail("t1", "w1", TaskFailure("InternalError", 500, "boom"))
    record = store.get("t1")
    assert (record.state, record.outputs, record.error_code) == (TaskState.SUCCEEDED, ["first.png"], None)


def test_late_worker_cannot_touch_a_task_reclaimed_by_another(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    store.claim("w1", LEASE, max_batch=1)
    expire_and_reap(store, clock)
    store.claim("w2", LEASE, max_batch=1)

    assert not store.succeed("t1", "w1", ["stale.png"], "stale")
    assert not store.fail("t1", "w1", TaskFailure("InternalError", 500, "stale"))
    store.progress(["t1"], "w1", 9, 9)
    store.heartbeat(["t1"], "w1", 10 * LEASE)
    record = store.get("t1")
    assert (record.state, record.attempt, record.progress_step) == (TaskState.RUNNING, 2, None)
    assert store.inputs("t1") == [b"a"]

    assert store.succeed("t1", "w2", ["fresh.png"], "fresh")
    record = store.get("t1")
    assert (record.outputs, record.actual_prompt) == (["fresh.png"], "fresh")


def test_late_worker_cannot_finish_a_requeued_task(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    expire_and_reap(store, clock)
    assert not store.succeed("t1", "w1", ["stale.png"], None)
    assert state(store, "t1") is TaskState.PENDING


def test_progress_is_written_only_for_the_owner(store, clock):
    submit(store, clock, "a", "b", batch_key="k")
    submit(store, clock, "c")
    store.claim("w1", LEASE, max_batch=2)
    store.progress(["a", "b", "c"], "w1", 4, 20)
    store.progress(["a"], "w2", 19, 20)
    progress = {task_id: (store.get(task_id).progress_step, store.get(task_id).progress_total)
                for task_id in ("a", "b", "c")}
    assert progress == {"a": (4, 20), "b": (4, 20), "c": (None, None)}


def test_release_requeues_without_spending_an_attempt(store, clock):
    submit(store, clock, "a", "b", batch_key="k")
    store.claim("w1", LEASE, max_batch=2)
    store.progress(["a", "b"], "w1", 1, 2)
    store.release(["a", "b"], "w1")
    for task_id in ("a", "b"):
        record = store.get(task_id)
        assert (record.state, record.attempt, record.started_at) == (TaskState.PENDING, 0, None)
        assert (record.progress_step, record.progress_total) == (None, None)
        assert worker_of(store.database, task_id) is None
    assert [record.attempt for record in store.claim("w2", LEASE, max_batch=2)] == [1, 1]


def test_release_after_a_reaped_attempt_keeps_the_earlier_attempt(store, clock):
    submit(store, clock, "t1")
    store.claim("w1", LEASE, max_batch=1)
    expire_and_reap(store, clock)
    store.claim("w2", LEASE, max_batch=1)
    store.release(["t1"], "w2")
    assert store.get("t1").attempt == 1
    assert store.claim("w3", LEASE, max_batch=1)[0].attempt == 2


def test_release_ignores_tasks_the_worker_does_not_hold(store, clock):
    submit(store, clock, "a", "b", "c")
    store.claim("w1", LEASE, max_batch=1)
    store.claim("w2", LEASE, max_batch=1)
    store.succeed("b", "w2", ["b.png"], None)
    store.claim("w1", LEASE, max_batch=1)
    store.release(["a"], "w2")
    store.release(["b"], "w2")
    store.release([], "w1")
    assert [state(store, task_id) for task_id in ("a", "b", "c")] == \
        [TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.RUNNING]
    assert store.get("b").attempt == 1


def test_cancel_ends_the_keys_pending_task(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    clock.advance(3)
    assert store.cancel("t1", "key-a")
    record = store.get("t1")
    assert (record.state, record.finished_at) == (TaskState.CANCELED, clock.now)
    assert store.inputs("t1") == []
    assert store.claim("w1", LEASE, max_batch=1) == []
    assert not store.cancel("t1", "key-a")


def test_cancel_refuses_another_keys_task(store, clock):
    submit(store, clock, "t1", inputs=[b"a"])
    assert not store.cancel("t1", "key-b")
    assert state(store, "t1") is TaskState.PENDING
    assert store.inputs("t1") == [b"a"]


def test_cancel_refuses_running_finished_and_unknown_tasks(store, clock):
    submit(store, clock, "running", "done")
    store.claim("w1", LEASE, max_batch=1)
    store.claim("w1", LEASE, max_batch=1)
    store.succeed("done", "w1", ["done.png"], None)
    assert not store.cancel("running", "key-a")
    assert not store.cancel("done", "key-a")
    assert not store.cancel("missing", "key-a")
    assert (state(store, "running"), state(store, "done")) == (TaskState.RUNNING, TaskState.SUCCEEDED)



@pytest.fixture
def history(store, clock):
    """Five key-a tasks and one key-b task, one second apart from the returned start time:

    a1 qwen-image SUCCEEDED, a2 qwen-image-edit RUNNING, b1 (key-b) RUNNING, a3 qwen-image CANCELED,
    a4 qwen-image PENDING, a5 qwen-image-edit PENDING.
    """
    start = clock.now
    submit(store, clock, "a1")
    submit(store, clock, "a2", model="qwen-image-edit")
    submit(store, clock, "b1", key_id="key-b")
    submit(store, clock, "a3")
    submit(store, clock, "a4")
    submit(store, clock, "a5", model="qwen-image-edit")
    # key-b's first task goes before key-a's second: claims take turns across keys
    assert [ids(store.claim("w1", LEASE, max_batch=1)) for _ in range(3)] == [["a1"], ["b1"], ["a2"]]
    assert store.succeed("a1", "w1", ["a1.png"], None)
    assert store.cancel("a3", "key-a")
    return start


def listing(store, key_id="key-a", **filters):
    page = store.list_tasks(TaskFilter(key_id=key_id, **filters))
    return page.total, ids(page.rows)


def test_list_shows_only_the_keys_tasks_newest_first(store, history):
    assert listing(store) == (5, ["a5", "a4", "a3", "a2", "a1"])
    assert listing(store, key_id="key-b") == (1, ["b1"])
    assert listing(store, key_id="key-c") == (0, [])


def test_list_rows_carry_what_the_list_shows_but_never_the_parameters(store, history):
    row, record = store.list_tasks(TaskFilter(key_id="key-a")).rows[-1], store.get("a1")
    assert (row.task_id, row.key_id, row.request_id, row.model, row.state) == \
        (record.task_id, record.key_id, record.request_id, record.model, record.state)
    assert (row.submitted_at, row.started_at, row.finished_at) == \
        (record.submitted_at, record.started_at, record.finished_at)
    assert not hasattr(row, "parameters")


@pytest.mark.parametrize(("model", "expected"), [
    ("qwen-image", ["a4", "a3", "a1"]),
    ("qwen-image-edit", ["a5", "a2"]),
    ("other", []),
])
def test_list_filters_by_model(store, history, model, expected):
    assert listing(store, model=model) == (len(expected), expected)


@pytest.mark.parametrize(("task_state", "expected"), [
    (TaskState.PENDING, ["a5", "a4"]),
    (TaskState.RUNNING, ["a2"]),
    (TaskState.SUCCEEDED, ["a1"]),
    (TaskState.CANCELED, ["a3"]),
    (TaskState.FAILED, []),
])
def test_list_filters_by_state(store, history, task_state, expected):
    assert listing(store, state=task_state) == (len(expected), expected)


def test_list_filters_by_submission_time_inclusively(store, history):
    assert listing(store, submitted_from=history + 3) == (3, ["a5", "a4", "a3"])
    assert listing(store, submitted_to=history + 1) == (2, ["a2", "a1"])
    assert listing(store, submitted_from=history + 1, submitted_to=history + 4) == (3, ["a4", "a3", "a2"])
    assert listing(store, submitted_from=history + 0.5, submitted_to=history + 0.9) == (0, [])


def test_list_combines_filters(store, history):
    assert listing(store, model="qwen-image", state=TaskState.PENDING) == (1, ["a4"])
    assert listing(store, model="qwen-image-edit", submitted_to=history + 3) == (1, ["a2"])


def test_list_pages_keep_the_full_total(store, history):
    assert listing(store, page_size=3) == (5, ["a5", "a4", "a3"])
    assert listing(store, page_size=3, page_no=2) == (5, ["a2", "a1"])
    assert listing(store, page_size=3, page_no=3) == (5, [])
    assert listing(store, page_size=2, page_no=2, model="qwen-image") == (3, ["a1"])


def test_count_pending_counts_every_keys_waiting_tasks(store, clock, history):
    assert store.count_pending() == 2
    submit(store, clock, "b2", key_id="key-b")
    assert store.count_pending() == 3


def test_count_pending_of_an_empty_store_is_zero(store):
    assert store.count_pending() == 0


def test_count_active_counts_pending_and_running_tasks_of_one_key_model_and_mode(store, clock):
    submit(store, clock, "running", "done", "failed", "canceled", "pending")
    submit(store, clock, "sync", mode=TaskMode.SYNC)
    submit(store, clock, "edit", model="qwen-image-edit")
    assert [ids(store.claim("w1", LEASE, max_batch=1)) for _ in range(3)] == [["running"], ["done"], ["failed"]]
    submit(store, clock, "other-key", key_id="key-b")
    store.succeed("done", "w1", [], None)
    store.fail("failed", "w1", TaskFailure("InternalError", 500, "boom"))
    store.cancel("canceled", "key-a")

    assert store.count_active("key-a", ["qwen-image"], TaskMode.ASYNC) == 2
    assert store.count_active("key-a", ["qwen-image"], TaskMode.SYNC) == 1
    assert store.count_active("key-a", ["qwen-image-edit"], TaskMode.ASYNC) == 1
    assert store.count_active("key-a", ["qwen-image", "qwen-image-edit"], TaskMode.ASYNC) == 3
    assert store.count_active("key-b", ["qwen-image"], TaskMode.ASYNC) == 1
    assert store.count_active("key-c", ["qwen-image"], TaskMode.ASYNC) == 0


def test_purge_deletes_finished_tasks_before_the_cut_off_with_their_inputs(store, clock):
    for task_id in ("succeeded", "failed", "reaped", "running", "canceled", "pending"):
        submit(store, clock, task_id, inputs=[task_id.encode()])
    store.claim("w1", LEASE, max_batch=1)
    store.succeed("succeeded", "w1", ["s.png"], None)
    store.claim("w1", LEASE, max_batch=1)
    store.fail("failed", "w1", TaskFailure("InternalError", 500, "boom"))
    store.claim("w1", LEASE, max_batch=1)
    assert expire_and_reap(store, clock, max_attempts=1) == (0, 1)
    store.claim("w1", LEASE, max_batch=1)
    store.cancel("canceled", "key-a")
    submit(store, clock, "at-cut-off")
    store.cancel("at-cut-off", "key-a")
    cut_off = store.get("at-cut-off").submitted_at

    assert store.purge(cut_off) == 4
    for task_id in ("succeeded", "failed", "reaped", "canceled"):
        assert store.get(task_id) is None
        assert store.inputs(task_id) == []
    assert [state(store, task_id) for task_id in ("running", "pending", "at-cut-off")] == \
        [TaskState.RUNNING, TaskState.PENDING, TaskState.CANCELED]
    assert sorted(raw(store.database, "SELECT task_id FROM task_inputs")) == [("pending",), ("running",)]
    assert store.purge(cut_off) == 0


def test_purge_never_deletes_unfinished_tasks(store, clock):
    submit(store, clock, "running", "pending")
    store.claim("w1", LEASE, max_batch=1)
    clock.advance(10 * LEASE)
    assert store.purge(clock.now) == 0
    assert store.count_pending() == 1
    assert state(store, "running") is TaskState.RUNNING


def test_reopened_store_sees_the_same_tasks(store, path, clock):
    submit(store, clock, "done", "running")
    submit(store, clock, "waiting", inputs=[b"kept", b"in order"])
    store.claim("w1", LEASE, max_batch=1)
    store.succeed("done", "w1", ["done.png"], "prompt")
    store.claim("w1", LEASE, max_batch=1)
    before = {task_id: store.get(task_id) for task_id in ("done", "running", "waiting")}

    reopened = SqliteTaskStore(path, clock=clock)
    assert {task_id: reopened.get(task_id) for task_id in before} == before
    assert reopened.inputs("waiting") == [b"kept", b"in order"]
    assert reopened.count_pending() == 1
    assert ids(reopened.claim("w2", LEASE, max_batch=1)) == ["waiting"]
    assert expire_and_reap(reopened, clock) == (2, 0)
    assert not store.succeed("running", "w1", ["late.png"], None)


def test_claims_take_turns_across_keys_whatever_the_submission_order(store, clock):
    submit(store, clock, "a1", "a2", "a3", key_id="key-a")
    submit(store, clock, "b1", "b2", key_id="key-b")
    submit(store, clock, "c1", key_id="key-c")
    claims = [ids(store.claim("w1", LEASE, max_batch=1)) for _ in range(6)]
    assert claims == [["a1"], ["b1"], ["c1"], ["a2"], ["b2"], ["a3"]]


def test_a_key_that_waited_goes_before_a_key_that_was_just_served(store, clock):
    submit(store, clock, "a1", "a2", key_id="key-a")
    assert ids(store.claim("w1", LEASE, max_batch=1)) == ["a1"]
    submit(store, clock, "b1", key_id="key-b")
    assert ids(store.claim("w1", LEASE, max_batch=1)) == ["b1"]
    assert ids(store.claim("w1", LEASE, max_batch=1)) == ["a2"]


def test_a_batch_fills_round_robin_across_keys(store, clock):
    submit(store, clock, "a1", "a2", "a3", "a4", key_id="key-a", batch_key="k")
    submit(store, clock, "b1", "b2", key_id="key-b", batch_key="k")
    submit(store, clock, "c1", key_id="key-c", batch_key="k")
    assert ids(store.claim("w1", LEASE, max_batch=4)) == ["a1", "b1", "c1", "a2"]


def test_a_key_over_its_share_of_the_queue_is_refused_while_others_are_not(store, clock):
    quota = Quota(ROOMY, max_pending_per_key=2)
    assert store.create(new_task("a1"), quota) is None
    assert store.create(new_task("a2"), quota) is None
    assert store.create(new_task("a3", inputs=[b"x"]), quota) is Refusal.KEY_SHARE
    assert store.get("a3") is None and store.inputs("a3") == []
    assert store.create(new_task("b1", key_id="key-b"), quota) is None
    store.claim("w1", LEASE, max_batch=1)  # a running task no longer holds a place in the queue
    assert store.create(new_task("a3"), quota) is None


def costly(task_id, cost, key_id="key-a"):
    task = new_task(task_id, key_id=key_id)
    task.cost = cost
    return task


def test_a_keys_work_in_flight_is_bounded_by_its_cost_budget(store, clock):
    quota = Quota(ROOMY, max_cost_per_key=100)
    assert store.create(costly("big", 250), quota) is None, "alone, any task runs, however large"
    assert store.create(costly("small", 1), quota) is Refusal.KEY_COST
    assert store.create(costly("other", 60, key_id="key-b"), quota) is None
    assert store.create(costly("other-2", 40, key_id="key-b"), quota) is None
    assert store.create(costly("other-3", 1, key_id="key-b"), quota) is Refusal.KEY_COST
    store.claim("w1", LEASE, max_batch=1)
    assert store.succeed("big", "w1", [], None)
    assert store.create(costly("small", 1), quota) is None, "finished work leaves the budget"


def test_a_keys_stored_results_are_bounded_by_its_quota(store, clock):
    quota = Quota(ROOMY, max_result_bytes_per_key=1000)
    submit(store, clock, "a1")
    store.claim("w1", LEASE, max_batch=1)
    assert store.succeed("a1", "w1", ["a1.png"], None, output_bytes=1000)
    assert store.create(new_task("a2"), quota) is Refusal.KEY_RESULTS
    assert store.refusal("key-a", 0, quota) is Refusal.KEY_RESULTS
    assert store.create(new_task("b1", key_id="key-b"), quota) is None
    store.purge(clock.now + 1)
    assert store.create(new_task("a2"), quota) is None, "expired results free the quota"


def test_cancel_pending_cancels_only_the_keys_waiting_tasks(store, clock):
    submit(store, clock, "a1", "a2", inputs=[b"x"])
    submit(store, clock, "b1", key_id="key-b")
    store.claim("w1", LEASE, max_batch=1)
    assert store.cancel_pending("key-a") == 1
    assert [state(store, task_id) for task_id in ("a1", "a2", "b1")] == \
        [TaskState.RUNNING, TaskState.CANCELED, TaskState.PENDING]
    assert store.inputs("a2") == []


def test_a_database_from_before_quotas_gains_their_columns(path, clock):
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, request_id TEXT "
                           "NOT NULL, mode TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, parameters TEXT "
                           "NOT NULL, batch_key TEXT, attempt INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until "
                           "REAL, submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, progress_step "
                           "INTEGER, progress_total INTEGER, outputs TEXT NOT NULL DEFAULT '[]', actual_prompt TEXT, "
                           "error_code TEXT, error_status INTEGER, error_message TEXT)")
        connection.commit()
    store = SqliteTaskStore(path, clock=clock)
    assert store.create(costly("t1", 5), Quota(ROOMY, max_cost_per_key=10)) is None
    assert raw(path, "SELECT cost, output_bytes FROM tasks") == [(5.0, 0)]


def test_the_database_is_private_to_the_servers_user(path, clock):
    SqliteTaskStore(path, clock=clock).create(new_task("t1"), Quota(ROOMY))
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for file in path.parent.iterdir():
        assert file.stat().st_mode & 0o777 == 0o600, file
