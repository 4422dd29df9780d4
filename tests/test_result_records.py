"""Screening results as typed records: the on-disk line round-trips, and reading validates each line."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facediag.edge.results import (
    ResultsError,
    ResultsWriter,
    latest_screening_results,
    read_results,
    read_screening_results,
)
from facediag.edge.screening.record import RESULT_SCHEMA, QualitySummary, ResultRecordError, ScreeningResult

# Lines in the form the daemon wrote before results became typed records (schema 1, plain dicts): the
# first copied from that daemon's run on the test_daemon fixture video, the second a retake written by
# hand in the same key order. The typed reader must accept them and write them back byte for byte.
LEGACY_LINES = [
    '{"record":"screening_result","schema":1,"session_id":"8a0a009e8e334c0387ed097a94c6a17b",'
    '"started_at":"2026-12-01T00:31:41.532Z","decided_at":"2026-12-01T00:31:41.727Z","decision":"refer",'
    '"condition":"glasses","probability":0.758355,"probabilities":{"healthy":0.241645,"glasses":0.758355},'
    '"reason":"glasses probability 0.76 reached its threshold","frames_used":5,"quality":{"frames_seen":5,'
    '"good_frames":5,"rejected_frames":0,"rejections":{}},'
    '"bundle_id":"ef58af4b56b201dd700925d4bc91aab390ca3ce0a3dd054bf9e892ebee3e84b3",'
    '"model_sha256":"0ae3571b5e1f5a5f24f61a907ff053a3823cf1996f626776f25ecea3090d4e51","precision":"fp32",'
    '"backend":"onnxruntime","notice":"screening aid, not a diagnosis: \'refer\' means offer a consultation with a '
    'clinician; \'no_finding\' does not rule out any condition","station_id":"vm"}',
    '{"record":"screening_result","schema":1,"session_id":"0b6d5c1f1d1a4a4e9c5f3f3c1d2e4f50",'
    '"started_at":"2026-11-30T09:00:00.000Z","decided_at":"2026-11-30T09:00:02.250Z","decision":"retake",'
    '"condition":null,"probability":null,"probabilities":{},"reason":"face left before enough good frames: '
    '2/5 good frames (rejected: blurred x3)","frames_used":0,"quality":{"frames_seen":5,"good_frames":2,'
    '"rejected_frames":3,"rejections":{"blurred":3}},"bundle_id":"","model_sha256":"","precision":"fp32",'
    '"backend":"onnxruntime","notice":"screening aid"}',
]


def _result(**changes: object) -> ScreeningResult:
    base = ScreeningResult(
        session_id="c17e1b2fe6f542b592fe7f5d278ac111", started_at="2026-12-01T00:36:40.248Z",
        decided_at="2026-12-01T00:36:40.533Z", decision="no_finding", condition=None, probability=None,
        probabilities={"healthy": 0.76655, "glasses": 0.23345}, reason="no condition reached its threshold",
        frames_used=5, quality=QualitySummary(7, 5, 2, {"blurred": 2}), bundle_id="b" * 64, model_sha256="m" * 64,
        precision="fp32", backend="onnxruntime", notice="screening aid, not a diagnosis",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_legacy_lines_read_back_and_rewrite_byte_for_byte(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(LEGACY_LINES) + "\n")
    page = read_screening_results(path)
    assert page.skipped == 0 and [r.decision for r in page.results] == ["refer", "retake"]
    assert page.results[0].station_id == "vm" and page.results[1].station_id is None
    assert page.results[1].quality.rejections == {"blurred": 3}
    out = tmp_path / "again.jsonl"
    with ResultsWriter(out, fsync=False) as writer:
        for r in page.results:
            writer.write(r)
    assert out.read_text().splitlines() == LEGACY_LINES


def test_a_record_round_trips_through_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [_result(), _result(decision="refer", condition="glasses", probability=0.8,
                                  probabilities={"healthy": 0.2, "glasses": 0.8}, visit_id="V-0042", station_id="k1")]
    with ResultsWriter(path, fsync=False) as writer:
        for r in records:
            writer.write(r)
    assert read_screening_results(path).results == records
    assert [ScreeningResult.from_json(d) for d in read_results(path)] == records
    assert latest_screening_results(path, 1).results == records[-1:]


@settings(max_examples=60, deadline=None)
@given(
    probs=st.dictionaries(st.text(min_size=1, max_size=12), st.floats(0.0, 1.0), min_size=1, max_size=6),
    rejections=st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 10**6), max_size=5),
    reason=st.text(max_size=200),
    frames=st.integers(0, 10**6),
)
def test_any_valid_record_survives_encode_and_decode(probs, rejections, reason, frames):
    from facediag.edge.results import encode_record

    r = _result(probabilities=probs, reason=reason, frames_used=frames,
                quality=QualitySummary(frames, frames, sum(rejections.values()), rejections))
    line = encode_record(r)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert ScreeningResult.from_json(json.loads(line)) == r


@pytest.mark.parametrize("field, value, named", [
    ("decision", "maybe", "decision"),
    ("probability", 1.5, "probability"),
    ("probabilities", {"healthy": "high"}, "probabilities.healthy"),
    ("probabilities", {"healthy": math.nan}, "probabilities.healthy"),
    ("frames_used", -1, "frames_used"),
    ("frames_used", True, "frames_used"),
    ("frames_used", 2.5, "frames_used"),
    ("session_id", "", "session_id"),
    ("started_at", "yesterday", "started_at"),
    ("started_at", "2026-12-01T00:36:40", "started_at"),  # no time zone
    ("quality", {"frames_seen": 1}, "quality"),
    ("quality", [], "quality"),
    ("notice", None, "notice"),
    ("station_id", 7, "station_id"),
])
def test_a_wrong_field_is_named(field, value, named):
    doc = _result().to_json()
    doc[field] = value
    with pytest.raises(ResultRecordError, match=named.replace(".", r"\.")):
        ScreeningResult.from_json(doc)


def test_kind_schema_and_keys_are_checked():
    doc = _result().to_json()
    with pytest.raises(ResultRecordError, match="newer facediag"):
        ScreeningResult.from_json({**doc, "schema": RESULT_SCHEMA + 1})
    with pytest.raises(ResultRecordError, match="must be an integer"):
        ScreeningResult.from_json({**doc, "schema": "1"})
    with pytest.raises(ResultRecordError, match="not a screening result"):
        ScreeningResult.from_json({**doc, "record": "checkpoint"})
    with pytest.raises(ResultRecordError, match="unknown field.*'photo'"):
        ScreeningResult.from_json({**doc, "photo": "..."})
    missing = dict(doc)
    del missing["backend"]
    with pytest.raises(ResultRecordError, match="missing 'backend'"):
        ScreeningResult.from_json(missing)
    with pytest.raises(ResultRecordError, match="JSON object"):
        ScreeningResult.from_json([doc])


def test_decision_and_fields_must_agree():
    with pytest.raises(ResultRecordError, match="needs a condition"):
        ScreeningResult.from_json(_result(decision="refer").to_json())
    with pytest.raises(ResultRecordError, match="no condition or probability"):
        ScreeningResult.from_json(_result(condition="glasses", probability=0.9).to_json())
    with pytest.raises(ResultRecordError, match="before started_at"):
        ScreeningResult.from_json(_result(decided_at="2026-12-01T00:36:40.000Z").to_json())


def test_reading_a_file_with_bad_lines_raises_or_counts(tmp_path):
    path = tmp_path / "r.jsonl"
    good = _result().to_json()
    lines = [good, {**good, "schema": 9}, {"i": 1}, _result(session_id="f" * 32).to_json()]
    path.write_text("".join(json.dumps(doc) + "\n" for doc in lines))
    with pytest.raises(ResultsError, match=r"record 2 is not a valid screening result.*schema 9"):
        read_screening_results(path)
    page = read_screening_results(path, strict=False)
    assert [r.session_id for r in page.results] == [good["session_id"], "f" * 32]
    assert page.skipped == 2 and any("schema 9" in p for p in page.problems)
    latest = latest_screening_results(path, 3)  # the last three lines: two bad, one good
    assert [r.session_id for r in latest.results] == ["f" * 32] and latest.skipped == 2
    assert latest_screening_results(tmp_path / "none.jsonl", 5).results == []
