"""``langground predict CKPT FOLDER|ROWS.jsonl``: one JSON line per result (atomically with --results), one
picture per image with --out, and one-line errors naming FILE:LINE for bad rows, before any model work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import test_inference_cli as predict_cli_tests
from langground.inference.batch import Job, JsonLinesWriter, chunks

# The CLI runner and the tiny trained checkpoint of the predict tests (module-scoped fixtures, shared).
cli, ckpt = predict_cli_tests.cli, predict_cli_tests.ckpt


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"b.png": (40, 60), "a.jpg": (50, 30), "c.png": (64, 64)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")  # skipped: not an image extension
    (folder / ".hidden.png").write_bytes(b"")  # skipped: hidden
    return folder


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, res.stderr  # one line (besides the synthetic-checkpoint note)
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_folder_gives_a_json_line_per_result_and_a_picture_per_image(cli, ckpt, photos, tmp_path):
    out = tmp_path / "pictures"
    res = cli("predict", ckpt, photos, "the red cube", "a green cylinder", "--out", out)
    assert res.exit_code == 0, res.output
    rows = json_lines(res.stdout)
    assert [(Path(r["image"]).name, r["expression"]) for r in rows] == [
        (name, text) for name in ("a.jpg", "b.png", "c.png") for text in ("the red cube", "a green cylinder")
    ]
    for r in rows:
        assert 0 <= r["box"]["xmin"] <= r["box"]["xmax"] <= r["width"]
        assert 0 <= r["box"]["ymin"] <= r["box"]["ymax"] <= r["height"]
        assert "line" not in r and Path(r["picture"]).parent == out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    with Image.open(out / "a.png") as pic:
        assert pic.width == 30  # drawn on the image's own pixels
    assert "6 results for 3 images" in res.stderr


def test_folder_matches_single_image_predictions(cli, ckpt, photos):
    rows = json_lines(cli("predict", ckpt, photos, "the red cube").stdout)
    single = json.loads(cli("predict", ckpt, photos / "b.png", "the red cube", "--json").stdout)["results"][0]
    (b,) = [r for r in rows if r["image"].endswith("b.png")]
    assert b["box"] == pytest.approx(single["box"], abs=0.05) and b["score"] == pytest.approx(
        single["score"], abs=1e-4
    )


def test_jsonl_rows_in_order_with_line_numbers_written_atomically(cli, ckpt, photos, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            [
                json.dumps({"image": "photos/a.jpg", "expression": "the red cube"}),
                json.dumps({"image": "photos/a.jpg", "expression": "the blue ball"}),
                "",
                json.dumps({"image": str(photos / "c.png"), "question": "small green cylinder"}),
            ]
        )
    )
    results = tmp_path / "out" / "results.jsonl"
    res = cli("predict", ckpt, rows, "--results", results)
    assert res.exit_code == 0, res.output
    assert json_lines(res.stdout) == []  # written to the file, not printed
    got = json_lines(results.read_text())
    assert [(r["line"], Path(r["image"]).name, r["expression"]) for r in got] == [
        (1, "a.jpg", "the red cube"),
        (2, "a.jpg", "the blue ball"),
        (4, "c.png", "small green cylinder"),
    ]
    assert [p.name for p in results.parent.iterdir()] == ["results.jsonl"]  # no temp file left


@pytest.mark.parametrize(
    "row, message",
    [
        ("{not json", "not valid JSON"),
        ('["photos/a.jpg", "the cube"]', "an array, expected an object"),
        ('{"expression": "the cube"}', '"image" is missing'),
        ('{"image": 3, "expression": "the cube"}', '"image" is a number 3'),
        ('{"image": "photos/a.jpg"}', '"expression" is missing'),
        ('{"image": "photos/a.jpg", "expression": ["the cube"]}', '"expression" is an array'),
        ('{"image": "photos/a.jpg", "expression": " ?! "}', "has no words"),
        ('{"image": "photos/nope.jpg", "expression": "the cube"}', "'photos/nope.jpg' not found"),
        ('{"image": "photos", "expression": "the cube"}', "is a directory"),
    ],
)
def test_bad_row_names_file_and_line(cli, ckpt, photos, tmp_path, row, message):
    rows = tmp_path / "rows.jsonl"
    good = json.dumps({"image": "photos/a.jpg", "expression": "the red cube"})
    rows.write_text(f"{good}\n{row}\n{good}\n")
    results = tmp_path / "results.jsonl"
    results.write_text("previous\n")
    res = cli("predict", tmp_path / "missing-ckpt", rows, "--results", results)  # rows first, model later
    one_line_error(res, f"{rows}:2: ", message)
    assert results.read_text() == "previous\n"


def test_undecodable_image_midway_names_the_row_and_keeps_old_results(cli, ckpt, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"image": "photos/a.jpg", "expression": "the cube"})
        + "\n"
        + json.dumps({"image": "photos/broken.png", "expression": "the cube"})
        + "\n"
    )
    results = tmp_path / "results.jsonl"
    results.write_text("previous\n")
    res = cli("predict", ckpt, rows, "--results", results, "--batch-size", "1")
    one_line_error(res, f"{rows}:2: ", "broken.png")
    assert results.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_batch_usage_errors(cli, ckpt, photos, tmp_path):
    one_line_error(cli("predict", ckpt, photos), "a folder needs expressions")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"image": "photos/a.jpg", "expression": "the cube"}) + "\n")
    one_line_error(cli("predict", ckpt, rows, "the cube"), "carries its own expressions")
    one_line_error(cli("predict", ckpt, rows, "--results", rows), "--results would overwrite it")
    one_line_error(cli("predict", ckpt, photos, "the cube", "--out", photos), "is the input folder")
    one_line_error(cli("predict", ckpt, photos, "the cube", "--out", tmp_path / "x.png"), "is a folder")
    (tmp_path / "empty").mkdir()
    one_line_error(cli("predict", ckpt, tmp_path / "empty", "the cube"), "no image files")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    one_line_error(cli("predict", ckpt, tmp_path / "blank.jsonl"), "no rows")
    assert rows.read_text().count("\n") == 1


def test_picture_names_never_clash_nor_hit_an_input(cli, ckpt, tmp_path):
    a, b = tmp_path / "x", tmp_path / "y"
    for folder in (a, b):
        folder.mkdir()
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "same.png")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(out / "img.png")  # an input living in --out
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps({"image": str(p), "expression": "the cube"})
            for p in (a / "same.png", b / "same.png", out / "img.png")
        )
    )
    before = (out / "img.png").read_bytes()
    res = cli("predict", ckpt, rows, "--out", out)
    assert res.exit_code == 0, res.output
    assert [Path(r["picture"]).name for r in json_lines(res.stdout)] == [
        "same.png",
        "same-2.png",
        "img-2.png",
    ]
    assert (out / "img.png").read_bytes() == before


def test_chunks_and_writer(tmp_path):
    jobs = [Job(Path(f"{i}.png"), ["a"] * n) for i, n in enumerate([3, 2, 5, 1, 1])]
    assert [[j.image.name for j in c] for c in chunks(jobs, 4)] == [
        ["0.png"],
        ["1.png"],
        ["2.png"],
        ["3.png", "4.png"],
    ]
    path = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError), JsonLinesWriter(path) as w:
        w.write({"a": 1})
        raise RuntimeError("interrupted")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with JsonLinesWriter(path) as w:
        w.write({"a": "é"})
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n' and oct(path.stat().st_mode & 0o777) == "0o644"
