"""JSON Patch (RFC 6902) and JSON Pointer (RFC 6901), pure: the RFC's own examples, and every failure naming its
operation and member."""

import copy
import json

import pytest

from fhir_mappings.json_patch import PatchFailed, PatchInvalid, apply_patch, merge_patch, parse_pointer

# (document, patch, expected): RFC 6902 Appendix A
APPLIED = [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}], {"foo": ["bar", ["abc", "def"]]}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
    ({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}], {"b": 2}),
    ({"a": 1.0}, [{"op": "test", "path": "/a", "value": 1}], {"a": 1.0}),  # numbers equal as numbers
    ({"name": [{"given": ["A"]}]}, [{"op": "replace", "path": "/name/0/given/0", "value": "B"}],
     {"name": [{"given": ["B"]}]}),
]


@pytest.mark.parametrize(("document", "patch", "expected"), APPLIED)
def test_apply_patch_gives_what_rfc_6902_says(document, patch, expected):
    before = copy.deepcopy(document)
    assert apply_patch(document, patch) == expected
    assert document == before  # the document passed in is left as it was


def test_replace_keeps_the_element_in_its_place():
    patched = apply_patch({"a": 1, "b": 2, "c": 3}, [{"op": "replace", "path": "/b", "value": 9}])
    assert list(patched) == ["a", "b", "c"]


# (patch, the expressions named): malformed patch documents, every problem named
INVALID = [
    ({"op": "add"}, ["Patch"]),
    ([1], ["Patch[0]"]),
    ([{"op": "delete", "path": "/a"}], ["Patch[0].op"]),
    ([{"path": "/a"}], ["Patch[0].op"]),
    ([{"op": "add", "path": "/a"}], ["Patch[0].value"]),
    ([{"op": "move", "path": "/a"}], ["Patch[0].from"]),
    ([{"op": "remove", "path": "a"}], ["Patch[0].path"]),
    ([{"op": "remove", "path": 3}], ["Patch[0].path"]),
    ([{"op": "test", "path": "/a~2", "value": 1}], ["Patch[0].path"]),
    ([{"op": "replace", "path": "/a", "value": 1}, {"op": "copy", "path": "/b"}, {"op": "x"}],
     ["Patch[1].from", "Patch[2].op"]),
]


@pytest.mark.parametrize(("patch", "expressions"), INVALID)
def test_malformed_patch_is_invalid_naming_each_member(patch, expressions):
    with pytest.raises(PatchInvalid) as caught:
        apply_patch({"a": 1}, patch)
    assert [p.expression for p in caught.value.problems] == expressions


# (document, patch, the expression named): well-formed, but not applicable to the document
FAILED = [
    ({"a": 1}, [{"op": "remove", "path": "/b"}], "Patch[0].path"),
    ({"a": 1}, [{"op": "replace", "path": "/b", "value": 2}], "Patch[0].path"),
    ({"a": 1}, [{"op": "add", "path": "/b/c", "value": 2}], "Patch[0].path"),
    ({"a": [1]}, [{"op": "add", "path": "/a/5", "value": 2}], "Patch[0].path"),
    ({"a": [1]}, [{"op": "remove", "path": "/a/1"}], "Patch[0].path"),
    ({"a": [1]}, [{"op": "remove", "path": "/a/01"}], "Patch[0].path"),
    ({"a": [1]}, [{"op": "replace", "path": "/a/-", "value": 2}], "Patch[0].path"),
    ({"a": 1}, [{"op": "add", "path": "/b", "value": 1}, {"op": "test", "path": "/a", "value": 2}], "Patch[1].value"),
    ({"a": True}, [{"op": "test", "path": "/a", "value": 1}], "Patch[0].value"),  # true is not 1
    ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/c"}], "Patch[0].path"),
    ({"a": 1}, [{"op": "copy", "from": "/z", "path": "/b"}], "Patch[0].from"),
    ({"a": 1}, [{"op": "remove", "path": ""}], "Patch[0].path"),
]


@pytest.mark.parametrize(("document", "patch", "expression"), FAILED)
def test_patch_that_does_not_apply_fails_naming_the_operation(document, patch, expression):
    before = copy.deepcopy(document)
    with pytest.raises(PatchFailed) as caught:
        apply_patch(document, patch)
    assert caught.value.problems[0].expression == expression
    assert document == before


@pytest.mark.parametrize(("pointer", "tokens"), [("", []), ("/", [""]), ("/a/b", ["a", "b"]),
                                                  ("/m~0n", ["m~n"]), ("/a~1b", ["a/b"]), ("/~01", ["~1"])])
def test_parse_pointer(pointer, tokens):
    assert parse_pointer(pointer) == tokens


@pytest.mark.parametrize(("target", "patch", "expected"), [
    # RFC 7396 Appendix A, each example
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_gives_what_rfc_7396_says(target, patch, expected):
    before = json.dumps(target)
    assert merge_patch(target, patch) == expected
    assert json.dumps(target) == before  # the target is not changed
