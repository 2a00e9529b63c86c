"""reg2rg.files: the atomic writers leave either the old file or the whole new one, never a part."""
import json
import os

import pytest

from reg2rg.files import write_json_atomic, write_text_atomic


def test_write_json_atomic_writes_the_whole_document_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"
    write_json_atomic(path, {"a": 1}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(TypeError):
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.json"]
