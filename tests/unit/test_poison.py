"""Bad input never wedges the projector: decode refuses records the read model cannot hold,
the fold refuses unstorable metadata, and a batch that Postgres refuses is bisected down to
the offending record, which is dead-lettered while the rest is folded."""

from __future__ import annotations

import contextlib

import pytest

from blobledger.projectors import applier
from blobledger.projectors.applier import Record, apply_isolating, is_poison
from blobledger.schemas.codec import Codec
from blobledger.schemas.errors import CodecError, PermanentError, TransientError
from blobledger.schemas.events import (
    AclChanged,
    BlobAttached,
    BlobStored,
    Envelope,
    MetadataUpdated,
    ObjectCreated,
    TagsChanged,
    check_event,
    new_id,
    object_id_for,
)

from .test_fold import outcomes, run


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def env(**kw):
    base = dict(object_id=new_id(), actor="alice")
    base.update(kw)
    return Envelope(**base)


BAD = {
    "event_id not a uuid": ObjectCreated(env(event_id="not-a-uuid"), key="k"),
    "object_id not a uuid": ObjectCreated(env(object_id="o1"), key="k"),
    "uppercase uuid": ObjectCreated(env(object_id=new_id().upper()), key="k"),
    "uuid without hyphens": ObjectCreated(env(event_id=new_id().replace("-", "")), key="k"),
    "upload_id not a uuid": BlobAttached(env(), upload_id="u1", source="file:///x", deadline=1),
    "upload_id garbage": BlobStored(
        env(actor="system:w"), upload_id="'; DROP TABLE x", sha256="a" * 64, key="k"
    ),
    "NUL in actor": ObjectCreated(env(actor="al\x00ice"), key="k"),
    "NUL in tenant": ObjectCreated(env(tenant="t\x00"), key="k"),
    "NUL in correlation_id": ObjectCreated(env(correlation_id="c\x00"), key="k"),
    "NUL in key": ObjectCreated(env(), key="a\x00b"),
    "NUL in tag": ObjectCreated(env(), key="k", tags=["ok", "b\x00d"]),
    "NUL in metadata text": ObjectCreated(env(), key="k", metadata_json='{"a":"\x00"}'),
    "NUL in content_type": ObjectCreated(env(), key="k", content_type="text/\x00"),
    "NUL in removed tag": TagsChanged(env(), removed=["\x00"]),
    "NUL in source": BlobAttached(env(), upload_id=new_id(), source="file:///\x00", deadline=1),
    "occurred_at beyond year 9999": ObjectCreated(env(occurred_at=2**62), key="k"),
    "deadline beyond year 9999": BlobAttached(
        env(), upload_id=new_id(), source="s", deadline=2**62
    ),
    "key too long for its index": ObjectCreated(env(), key="k" * 2049),
    "multibyte key too long": ObjectCreated(env(), key="\u00e9" * 1025),
    "actor too long": ObjectCreated(env(actor="a" * 513), key="k"),
    "tag too long": TagsChanged(env(), added=["t" * 513]),
    "principal too long": AclChanged(env(), principal="p" * 513, permissions=["read"]),
    "sha256 too long": BlobStored(
        env(actor="system:w"), upload_id=new_id(), sha256="a" * 129, key="k"
    ),
}


@pytest.mark.parametrize("event", BAD.values(), ids=BAD.keys())
def test_decode_refuses_what_the_read_model_cannot_hold(codec, event):
    data = codec.encode(event)  # fits the Avro types...
    with pytest.raises(CodecError):  # ...but not the event contract: it goes to the DLQ
        codec.decode(data)
    with pytest.raises(ValueError):
        check_event(event)


def test_decode_accepts_valid_events(codec):
    e = ObjectCreated(
        env(causation_id=new_id()), key="a/b", metadata_json='{"x":"\\u00e9"}', tags=["t"]
    )
    assert codec.decode(codec.encode(e)) == e
    check_event(e)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":"x\\u0000y"}',  # NUL inside a value (valid JSON; jsonb refuses it)
        '{"a\\u0000":1}',  # ... inside a key
        '{"a":{"b":["\\u0000"]}}',  # ... nested
        '{"a":"\\ud800"}',  # a lone surrogate
        '{"a":NaN}',  # not JSON
        '{"a":-Infinity}',
        "[" * 100000 + "]" * 100000,  # deeper than the parser goes
    ],
)
def test_fold_refuses_unstorable_metadata(text):
    oid = object_id_for("default", "k")  # the fold refuses a create under any other id
    e = lambda **kw: Envelope(object_id=oid, actor="alice", **kw)  # noqa: E731
    objs, _, write, _ = run([ObjectCreated(e(), key="k", metadata_json=text)])
    assert outcomes(write)[0][1:3] == ("rejected", "invalid_metadata") and oid not in objs
    objs, _, write, _ = run([ObjectCreated(e(), key="k"), MetadataUpdated(e(), patch_json=text)])
    assert outcomes(write)[1][1:3] == ("rejected", "invalid_metadata") and objs[oid].metadata == {}


def test_fold_keeps_escaped_text_that_is_storable():
    oid = object_id_for("default", "k")
    objs, _, write, _ = run(
        [
            ObjectCreated(
                Envelope(object_id=oid, actor="a"),
                key="k",
                metadata_json='{"a":"caf\\u00e9 \\\\u0000 \\ud83d\\ude00"}',
            )
        ]
    )
    assert outcomes(write)[0][1] == "accepted"
    assert objs[oid].metadata == {"a": "café \\u0000 \U0001f600"}


class _SqlError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _translated(sqlstate: str) -> PermanentError:
    try:
        raise _SqlError(sqlstate)
    except _SqlError as e:
        try:
            raise PermanentError(str(e)) from e
        except PermanentError as p:
            return p


def test_is_poison_blames_data_not_the_environment():
    assert is_poison(_translated("22021"))  # invalid byte sequence / NUL
    assert is_poison(_translated("23505"))  # unique violation
    assert is_poison(_translated("54000"))  # index row too large
    assert is_poison(OverflowError("date value out of range"))
    assert is_poison(RecursionError())
    assert not is_poison(_translated("42P01"))  # undefined table: an operator's problem
    assert not is_poison(_translated("40P01"))  # deadlock: retry
    assert not is_poison(TransientError("connection lost"))
    assert not is_poison(KeyboardInterrupt())
    import psycopg

    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    assert not is_poison(lost)  # no SQLSTATE: the connection, not the record
    assert not is_poison(psycopg.InterfaceError("the connection is closed"))
    try:
        raise TransientError("postgres: lost") from lost
    except TransientError as e:
        assert not is_poison(e)
    assert is_poison(psycopg.errors.ProgramLimitExceeded("index row requires 32016 bytes"))


class _FakeModel:
    """Records commits; a batch holding a poisoned event fails like Postgres would."""

    def __init__(self, poisoned: set[int], error: BaseException) -> None:
        self.poisoned, self.error = poisoned, error
        self.committed_batches: list[list[tuple[int, bool]]] = []
        self._pending = None
        self.rollbacks = 0

    def transaction(self):
        return contextlib.nullcontext()

    def committed(self):
        self.committed_batches.append(self._pending)

    def rolled_back(self):
        self.rollbacks += 1


def _fake_apply_batch(model, topic, records, positions=None):
    if any(r.event is not None and r.offset in model.poisoned for r in records):
        raise model.error
    model._pending = [(r.offset, r.event is not None) for r in records]
    return applier.BatchStats(applied=sum(r.event is not None for r in records))


def test_bisection_dead_letters_only_the_offending_records(monkeypatch):
    monkeypatch.setattr(applier, "apply_batch", _fake_apply_batch)
    model = _FakeModel({5, 6, 17}, _translated("22P05"))
    recs = [Record("t", i % 2, i, object()) for i in range(20)]
    dead: list[int] = []
    positions = {0: 0, 1: 1}
    stats = apply_isolating(model, "t", recs, positions, lambda r, e: dead.append(r.offset))
    assert dead == [5, 6, 17] and stats.dead_letters == 3 and stats.applied == 17
    done = [o for batch in model.committed_batches for o, _ in batch]
    assert sorted(done) == list(range(20)) and done == sorted(done)  # log order kept
    skipped = [o for batch in model.committed_batches for o, has in batch if not has]
    assert skipped == [5, 6, 17]  # their checkpoints move without an event
    assert positions == {0: 19, 1: 20}


def test_environment_failures_are_not_bisected(monkeypatch):
    monkeypatch.setattr(applier, "apply_batch", _fake_apply_batch)
    model = _FakeModel({3}, _translated("42P01"))
    with pytest.raises(PermanentError):
        apply_isolating(
            model,
            "t",
            [Record("t", 0, i, object()) for i in range(8)],
            None,
            lambda r, e: pytest.fail("must not dead-letter"),
        )
    assert model.committed_batches == [] and model.rollbacks == 1
