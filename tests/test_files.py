"""reg2rg.files: the atomic writers leave either the old file or the whole new one, never a part."""
import json
import os

import pytest

from reg2rg.files import atomic_path, write_json_atomic, write_text_atomic


def test_write_json_atomic_writes_the_whole_document_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"
    write_json_atomic(path, {"a": 1}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": 1\n}\n'
    write_json_atomic(path, {"é": "ü"}, indent=1, ensure_ascii=False)
    assert path.read_bytes() == '{\n "é": "ü"\n}\n'.encode("utf-8")
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(TypeError):  # fails in json.dumps, before anything is written
        write_json_atomic(path, {"not json": object()})
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.json"]

    # Fails after the whole temporary file is written, at the rename: the old file stays, the temporary goes.
    seen = []

    def failing_replace(src, dst):
        seen.append(sorted(os.listdir(tmp_path)))
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_json_atomic(path, {"new": 1})
    monkeypatch.undo()
    assert len(seen) == 1 and len(seen[0]) == 2 and seen[0][0].startswith(".out.json.tmp")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.json"]


def test_a_writer_failing_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path, suffix=".nii.gz") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".scan.tmp") and tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("writer crashed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["scan.nii.gz"]
    with atomic_path(path, suffix=".nii.gz") as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["scan.nii.gz"]


def test_relative_source_names_a_file_by_its_path_under_the_root(tmp_path):
    """One rule for the tables, the sidecars and the logs: the path as written under the root, else after
    resolving links, else nothing (never an absolute path)."""
    from reg2rg.files import relative_source

    root, outside = tmp_path / "Doe^John" / "data", tmp_path / "elsewhere"
    (root / "vol").mkdir(parents=True)
    outside.mkdir()
    (outside / "c2.nii.gz").write_bytes(b"x")
    (root / "vol" / "c2.nii.gz").symlink_to(outside / "c2.nii.gz")  # a link out of the root
    assert relative_source(root / "vol" / "c1.nii.gz", root) == "vol/c1.nii.gz"
    assert relative_source(root / "vol" / "c2.nii.gz", root) == "vol/c2.nii.gz"  # as written, not its target
    assert relative_source(root / "vol" / ".." / "vol" / "c1.nii.gz", root) == "vol/c1.nii.gz"  # ".." folded
    assert relative_source(outside / "c2.nii.gz", root) is None
    assert relative_source(root / "vol" / "c1.nii.gz", None) is None
