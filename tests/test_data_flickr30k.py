"""Flickr30k Entities raw layout: ``Sentences/<id>.txt``, ``Annotations/<id>.xml``, ``{train,val,test}.txt``.

The XML is VOC-like with 1-based pixel boxes (the official ``get_annotations`` subtracts 1 from all four
coordinates); a phrase's chain may have several boxes, one ``<object>`` may name several chains, and
chains without a box carry ``nobndbox`` / ``scene`` flags. Merged protocol: one union box per phrase;
separate protocol: every box of the phrase.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langground.data import dataset_spec, open_dataset
from langground.data.flickr30k import parse_sentence
from langground.data.stats import dataset_stats

SENTENCES = """\
[/EN#18/people Two young guys] with [/EN#19/bodyparts shaggy hair] look at [/EN#20/bodyparts their hands] while hanging out in [/EN#21/scene the yard] .
[/EN#18/people Two young , White males] are outside near [/EN#22/other many bushes] .
[/EN#0/notvisual Someone] watches [/EN#23/clothing/other a red shirt] .
"""

XML = """<annotation>
  <filename>1000092795.jpg</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>11</xmax><ymax>31</ymax></bndbox></object>
  <object><name>18</name><bndbox><xmin>21</xmin><ymin>6</ymin><xmax>36</xmax><ymax>26</ymax></bndbox></object>
  <object><name>19</name><name>20</name>
    <bndbox><xmin>3</xmin><ymin>12</ymin><xmax>9</xmax><ymax>16</ymax></bndbox></object>
  <object><name>23</name><bndbox><xmin>41</xmin><ymin>1</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object>
  <object><name>21</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>22</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""

XML2 = """<annotation><filename>36979.jpg</filename>
  <size><width>20</width><height>10</height><depth>3</depth></size>
  <object><name>5</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>
</annotation>
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flickr")
    (root / "Sentences").mkdir()
    (root / "Annotations").mkdir()
    (root / "Sentences" / "1000092795.txt").write_text(SENTENCES)
    (root / "Annotations" / "1000092795.xml").write_text(XML)
    (root / "Sentences" / "36979.txt").write_text("[/EN#5/animals A dog] runs .\n")
    (root / "Annotations" / "36979.xml").write_text(XML2)
    (root / "test.txt").write_text("1000092795\n")
    (root / "val.txt").write_text("36979\n")
    (root / "train.txt").write_text("")
    (root / "flickr30k_images").mkdir()
    Image.new("RGB", (50, 40)).save(root / "flickr30k_images" / "1000092795.jpg")
    return root


def test_parse_sentence_like_the_official_toolkit():
    sentence, phrases = parse_sentence("[/EN#23/clothing/other a red shirt] and [/EN#7/people him] .")
    assert sentence == "a red shirt and him ."
    assert [(p["phrase"], p["chain"], p["types"], p["first_word_index"]) for p in phrases] == [
        ("a red shirt", "23", ["clothing", "other"], 0),
        ("him", "7", ["people"], 4),
    ]


def test_merged_protocol_one_union_box_per_phrase(root):
    ds = open_dataset(root, "flickr30k", "test")
    assert ds.protocol == dataset_spec("flickr30k").protocol and ds.protocol.box_match == "merged"
    texts = [r.text for r in ds]
    # scene / nobndbox / notvisual phrases have no box and are not records
    assert texts == ["Two young guys", "shaggy hair", "their hands", "Two young , White males", "a red shirt"]
    r = ds[0]
    # chain 18: boxes (1,11,11,31) and (21,6,36,26), 1-based -> minus 1 -> union (0,5,35,30)
    np.testing.assert_array_equal(r.boxes, [[0, 5, 35, 30]])
    assert r.meta["n_boxes"] == 2 and r.ref_id == 18 and r.family == "people"
    assert r.image_size == (40, 50) and Path(r.image_path).is_file()
    assert (
        r.meta["sentence"].startswith("Two young guys with shaggy hair") and r.meta["first_word_index"] == 0
    )
    # one <object> naming two chains gives both the same box
    np.testing.assert_array_equal(ds[1].boxes, [[2, 11, 8, 15]])
    np.testing.assert_array_equal(ds[2].boxes, [[2, 11, 8, 15]])
    assert ds[4].meta["phrase_types"] == ["clothing", "other"] and ds[4].family == "clothing"
    np.testing.assert_array_equal(ds[4].boxes, [[40, 0, 49, 39]])
    assert ds.skipped == {"no_box": 1, "scene": 1, "not_visual": 1}
    assert [r.sample_id for r in ds][:2] == ["1000092795/0/0", "1000092795/0/1"]


def test_separate_protocol_keeps_every_box(root):
    ds = open_dataset(root, "flickr30k-separate", "test")
    assert ds.protocol.box_match == "any"
    np.testing.assert_array_equal(ds[0].boxes, [[0, 10, 10, 30], [20, 5, 35, 25]])
    assert ds[3].boxes.shape == (2, 4)  # same chain, second sentence
    same = open_dataset(root, "flickr30k", "test", boxes="separate")
    assert same.protocol.box_match == "any" and same[0].boxes.shape == (2, 4)


def test_all_splits_and_stats(root):
    ds = open_dataset(root, "flickr30k", "all")
    assert ds.splits == ("test", "val") and len(ds) == 6
    r = [r for r in ds if r.split == "val"][0]
    np.testing.assert_array_equal(r.boxes, [[1, 1, 4, 8]])
    st = dataset_stats(ds)
    assert st["splits"]["test"]["expressions"] == 5 and st["splits"]["test"]["refs"] == 4
    assert st["families"]["people"] == {"test": 2}


def test_parse_sentence_gives_character_spans_in_the_plain_sentence():
    sentence, phrases = parse_sentence(SENTENCES.splitlines()[1])
    assert [sentence[a:b] for a, b in (p["span"] for p in phrases)] == [
        "Two young , White males",
        "many bushes",
    ]


def test_phrase_task_one_record_per_caption_with_its_grounded_phrases(root):
    ds = open_dataset(root, "flickr30k", "test", task="phrase")
    assert ds.task == "phrase" and ds.protocol.tasks == ("phrase",) and ds.protocol.box_match == "merged"
    assert len(ds) == 3 and [r.sample_id for r in ds] == ["1000092795/0", "1000092795/1", "1000092795/2"]
    r = ds[0]
    assert r.text.startswith("Two young guys with shaggy hair look at their hands")
    # the scene phrase "the yard" has no box: not a query (counted as skipped, as in the rec mode)
    assert [r.text[a:b] for a, b in (p.span for p in r.phrases)] == [
        "Two young guys",
        "shaggy hair",
        "their hands",
    ]
    assert [(p.phrase_id, p.family) for p in r.phrases] == [
        ("18", "people"),
        ("19", "bodyparts"),
        ("20", "bodyparts"),
    ]
    np.testing.assert_array_equal(r.phrases[0].boxes, [[0, 5, 35, 30]])  # merged: the union box
    np.testing.assert_array_equal(r.phrases[2].boxes, [[2, 11, 8, 15]])
    # the record's boxes: every distinct box of its phrases (what a referent-safe crop keeps whole)
    np.testing.assert_array_equal(r.boxes, [[0, 5, 35, 30], [2, 11, 8, 15]])
    # "many bushes" (nobndbox) is dropped; "Someone" (notvisual) too
    assert [len(x.phrases) for x in ds] == [3, 1, 1]
    assert (
        ds[2].text == "Someone watches a red shirt ."
        and ds[2].text[slice(*ds[2].phrases[0].span)] == "a red shirt"
    )
    assert ds.skipped == {"no_box": 1, "scene": 1, "not_visual": 1, "no_phrase_caption": 0}


def test_phrase_task_separate_boxes_and_retrieval_keeps_every_caption(root, tmp_path):
    sep = open_dataset(root, "flickr30k-separate", "test", task="phrase")
    np.testing.assert_array_equal(sep[0].phrases[0].boxes, [[0, 10, 10, 30], [20, 5, 35, 25]])
    assert sep.protocol.box_match == "any" and sep.protocol.tasks == ("phrase",)
    # a caption whose only phrase has no box: skipped by `phrase`, kept by `retrieval`
    for sub in ("Sentences", "Annotations", "flickr30k_images"):
        (tmp_path / sub).mkdir()
    (tmp_path / "Sentences" / "55.txt").write_text(
        "[/EN#5/animals A dog] runs .\n[/EN#0/notvisual Nobody] .\n"
    )
    (tmp_path / "Annotations" / "55.xml").write_text(XML2)
    Image.new("RGB", (20, 10)).save(tmp_path / "flickr30k_images" / "55.jpg")
    (tmp_path / "val.txt").write_text("55\n")
    phrase = open_dataset(tmp_path, "flickr30k", "val", task="phrase")
    assert [r.text for r in phrase] == ["A dog runs ."] and phrase.skipped["no_phrase_caption"] == 1
    retrieval = open_dataset(tmp_path, "flickr30k", "val", task="retrieval")
    assert retrieval.task == "retrieval" and [r.text for r in retrieval] == ["A dog runs .", "Nobody ."]
    assert [len(r.phrases) for r in retrieval] == [1, 0]
    assert retrieval.protocol.metrics["retrieval"][0] == "retrieval/r@1_t2i"
    assert phrase.protocol.metrics == {"phrase": ("phrase/recall@1",)}


def test_unknown_task_is_a_one_line_error(root):
    from langground.errors import DataError

    with pytest.raises(
        DataError, match="unknown task 'gres' for Flickr30k Entities; expected one of rec, phrase"
    ):
        open_dataset(root, "flickr30k", "test", task="gres")
