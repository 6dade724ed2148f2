from __future__ import annotations

from vlmtune.data.multiturn import pack_turns
from vlmtune.data.templates import record_to_turns


def _vqa(i: int, image: str) -> dict:
    return {"id": f"q{i}", "task": "vqa", "image": image, "question": f"question {i}?", "answer": f"a{i}"}


def test_questions_about_one_image_become_one_conversation_with_the_same_turns():
    records = [_vqa(0, "x.png"), _vqa(1, "y.png"), _vqa(2, "x.png"), _vqa(3, "x.png")]
    packed = pack_turns(records, turns_per_image=2)
    assert [r["image"] for r in packed] == ["x.png", "x.png", "y.png"]
    assert sorted(sum((r["turn_ids"] for r in packed), [])) == ["q0", "q1", "q2", "q3"]
    first = packed[0]
    assert first["task"] == "conversation" and len(first["conversations"]) == 4
    by_id = {r["id"]: r for r in records}
    for k, rid in enumerate(first["turn_ids"]):
        (_, prompt), (_, answer) = record_to_turns(by_id[rid])
        human, gpt = first["conversations"][2 * k : 2 * k + 2]
        assert gpt == {"from": "gpt", "value": answer}
        # only the first turn carries the image placeholder
        assert human["value"] == (prompt if k == 0 else prompt.replace("<image>\n", "", 1))
    assert sum(t["value"].count("<image>") for t in first["conversations"]) == 1
    # a leftover single question stays one turn and keeps its id
    assert packed[1]["id"] in {"q0", "q2", "q3"} and len(packed[1]["conversations"]) == 2


def test_packing_is_seeded_and_one_turn_is_a_no_op():
    records = [_vqa(i, "x.png") for i in range(5)]
    assert pack_turns(records, 1) is records
    a, b = pack_turns(records, 5, seed=0), pack_turns(records, 5, seed=0)
    assert a == b
    orders = {tuple(pack_turns(records, 5, seed=s)[0]["turn_ids"]) for s in range(6)}
    assert len(orders) > 1


def test_conversations_and_multi_image_records_pass_through():
    conv = {"id": "c", "task": "conversation", "image": "x.png", "conversations": []}
    nlvr = {"id": "n", "task": "nlvr", "images": ["x.png", "y.png"], "question": "?", "answer": True}
    assert pack_turns([conv, nlvr, _vqa(0, "x.png")], 3)[:2] == [conv, nlvr]
