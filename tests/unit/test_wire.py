"""engine.wire: typed values that cross a process border as JSON, both ways."""

import json
from dataclasses import dataclass

import pytest

from engine.wire import Wire, WireError, to_wire
from plugins.whatis.results import Classification, Scored


@dataclass(frozen=True)
class Leaf(Wire):
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Tree(Wire):
    OMIT_NONE = frozenset({"note"})

    leaves: tuple[Leaf, ...]
    tags: list[str]
    best: Leaf | None = None
    note: str | None = None


def test_a_nested_value_survives_a_json_round_trip():
    tree = Tree(leaves=(Leaf("a", 0.5), Leaf("b")), tags=["x"], best=Leaf("a", 0.5))
    wire = json.loads(json.dumps(tree.to_json()))
    assert wire == {"leaves": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 1.0}], "tags": ["x"],
                    "best": {"name": "a", "weight": 0.5}}  # note: None is left out
    back = Tree.from_json(wire)
    assert back == tree and isinstance(back.leaves, tuple) and isinstance(back.leaves[0], Leaf)


def test_an_int_is_a_fine_float_and_missing_optional_fields_default():
    assert Tree.from_json({"leaves": [{"name": "a", "weight": 2}], "tags": []}) == Tree((Leaf("a", 2.0),), [])


@pytest.mark.parametrize("data, message", [
    ({"leaves": [], "tags": [], "colour": "red"}, "unknown fields colour"),
    ({"tags": []}, "leaves"),
    ({"leaves": [{"name": 3}], "tags": []}, "Leaf.name: expected str"),
    ({"leaves": {"name": "a"}, "tags": []}, "Tree.leaves: expected a list"),
    ("not an object", "expected an object"),
])
def test_a_wrong_shape_is_one_clear_error(data, message):
    with pytest.raises(WireError, match=message):
        Tree.from_json(data)


def test_to_wire_converts_wire_results_and_leaves_plain_json_alone():
    result = Classification(model="m", labels=(Scored("cat", 0.9), Scored("dog", 0.1)))
    assert to_wire(result) == {"model": "m", "labels": [{"label": "cat", "score": 0.9},
                                                        {"label": "dog", "score": 0.1}], "meaningless": False,
                              "unsure": False, "picture": "", "explain": [], "method": "", "taught": []}
    assert to_wire({"plain": 1}) == {"plain": 1}
    assert Classification.from_json(to_wire(result)).best == Scored("cat", 0.9)
