"""samples.jsonl on disk: part files survive kills, resume skips what is written, the merge is exact."""

from __future__ import annotations

import json

import pytest

from dsl_scale.sampling import records


def rec(i: int) -> dict:
    return {"index": i, "tokens": [i], "text": str(i), "nfe": 3}


def test_a_cut_line_is_not_counted_and_is_repaired(tmp_path):
    out = tmp_path / "s.jsonl"
    records.PartWriter(out, 0).write([rec(0), rec(2)])
    part = records.parts_dir(out) / "rank00000.jsonl"
    with open(part, "a") as f:
        f.write(json.dumps(rec(4)))  # killed before the newline
    assert sorted(records.collect(out)) == [0, 2]
    assert sorted(records.collect(out, repair=True)) == [0, 2]
    records.PartWriter(out, 0).write([rec(4)])
    assert sorted(records.collect(out)) == [0, 2, 4]


def test_merge_sorts_dedupes_and_removes_the_parts(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text("".join(json.dumps(rec(i)) + "\n" for i in (1, 0)))
    records.PartWriter(out, 0).write([rec(3), rec(1)])  # 1 again: killed between merge and clean-up
    records.PartWriter(out, 1).write([rec(2)])
    merged = records.merge(out)
    assert [r["index"] for r in merged] == [0, 1, 2, 3]
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2, 3]
    assert not records.parts_dir(out).exists()


def test_resuming_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    identity = {k: 1 for k in records.IDENTITY_KEYS}
    records.check_resumable(out, identity)  # nothing written yet: anything goes
    records.PartWriter(out, 0).write([rec(0)])
    records.settings_path(out).write_text(json.dumps(identity))
    records.check_resumable(out, {**identity, "batch_size": 7})  # not part of a sample's identity
    with pytest.raises(ValueError, match="seed"):
        records.check_resumable(out, {**identity, "seed": 2})
