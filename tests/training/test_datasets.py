"""Dataset loaders: the OpenClipart corpus (a tiny fake one, and the real Debian one), .mat files and their
label layouts, and the Wikipedia benchmark (the real files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from typer.testing import CliRunner

from training.cli import app
from training.datasets import DatasetNotFoundError, load_dataset, seeded_split
from training.datasets import openclipart as oc
from training.datasets.matfile import load_mat
from training.datasets.wikipedia import WIKIPEDIA_DIR
from training.evaluation.metrics import relevance

REAL_CORPUS = Path("/usr/share/openclipart")

SVG = """<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF><cc:Work rdf:about="">
<dc:title>{title}</dc:title><dc:description>{description}</dc:description>
<dc:subject><rdf:Bag><rdf:li></rdf:li>{keywords}</rdf:Bag></dc:subject>
<dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
</cc:Work></rdf:RDF></metadata></svg>"""


def _svg(title: str, description: str = "", keywords: tuple[str, ...] = ()) -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return SVG.format(title=title, description=description, keywords=items)


def test_svg_metadata_takes_the_works_title_not_an_agents() -> None:
    meta = oc.parse_svg_metadata(_svg("Red &amp; blue car", "A car", ("car", "vehicle")))
    assert meta == {"title": "Red & blue car", "description": "A car", "keywords": ["car", "vehicle"]}
    assert oc.item_text(meta) == "Red & blue car A car car vehicle"


def test_an_items_views_are_its_title_and_each_keyword_alone_never_its_full_text() -> None:
    meta = oc.parse_svg_metadata(_svg("Red car", "A car", ("car", "vehicle", "car")))
    assert oc.item_views(meta) == ["Red car", "car", "vehicle"]
    title_only = {"title": "Apple", "description": "", "keywords": []}
    assert oc.item_views(title_only) == []  # the title is the whole text: no shorter view


def test_svg_without_metadata_gives_empty_fields() -> None:
    assert oc.parse_svg_metadata("<svg/>") == {"title": "", "description": "", "keywords": []}


def test_split_is_seeded_disjoint_and_trains_inside_the_database() -> None:
    a, b = seeded_split(100, 10, 50, seed=1), seeded_split(100, 10, 50, seed=1)
    c = seeded_split(100, 10, 50, seed=2)
    assert np.array_equal(a.query, b.query) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.query, c.query)
    assert not set(a.query) & set(a.database)
    assert set(a.query) | set(a.database) == set(range(100))
    assert set(a.train) <= set(a.database) and len(a.train) == 50
    assert len(seeded_split(100, 10, None, 0).train) == 90


def _png(path: Path, mode: str = "RGBA") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (30, 20), 128).save(path)


@pytest.fixture
def fake_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """animals/birds × 3, food × 3, one bird also filed under food via a symlink, one corrupt PNG."""
    root = tmp_path / "openclipart"
    for i in range(3):
        _png(root / "png" / "animals" / "birds" / f"bird_{i}.png")
        svg_dir = root / "svg" / "animals" / "birds"
        svg_dir.mkdir(parents=True, exist_ok=True)
        (svg_dir / f"bird_{i}.svg").write_text(_svg(f"Bird {i}", keywords=("bird",)))
        _png(root / "png" / "food" / f"apple_{i}.png", mode="P")
    (root / "png" / "food" / "bird_0.png").symlink_to(root / "png" / "animals" / "birds" / "bird_0.png")
    (root / "png" / "food" / "broken.png").write_bytes(b"not a png")
    monkeypatch.setattr(oc, "CACHE_DIR", tmp_path / "cache")
    return root


def test_openclipart_items_are_real_files_labelled_by_every_folder_reaching_them(fake_corpus: Path) -> None:
    data = oc.load_openclipart(fake_corpus, n_query=2, min_label_members=3, workers=1)
    assert len(data) == 6  # six real images: a symlink adds a label, not an item; the corrupt one is skipped
    assert data.stats["corrupt_skipped"] == 1
    assert data.label_names == ["animals", "animals/birds", "food"]
    bird0 = data.ids.index("animals/birds/bird_0")
    assert data.labels[bird0].tolist() == [1, 1, 1]
    assert data.texts[bird0] == "Bird 0 bird"
    apple = data.ids.index("food/apple_1")
    assert data.texts[apple] == "apple"  # no SVG: the file name stands in for the title
    assert data.text_views[bird0] == ["Bird 0", "bird"] and data.text_views[apple] == []
    assert data.images.shape == (6, 3, 64, 64) and data.images.dtype == np.uint8


def test_openclipart_drops_rare_labels_and_items_left_without_one(fake_corpus: Path) -> None:
    data = oc.load_openclipart(fake_corpus, n_query=1, min_label_members=4, workers=1)
    assert data.label_names == ["food"]  # 4 items reach food, 3 reach animals
    assert len(data) == 4 and data.stats["dropped_without_label"] == 2


def test_missing_corpus_names_the_debian_packages(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="openclipart-png and openclipart-svg"):
        oc.load_openclipart(tmp_path / "nowhere")


@pytest.mark.skipif(not REAL_CORPUS.is_dir(), reason="Debian openclipart packages not installed")
def test_real_openclipart_corpus_matches_its_documented_counts() -> None:
    data = oc.load_openclipart()
    assert data.stats["real_png_files"] == 6900
    assert len(data) == 6873 and len(data.label_names) == 62
    assert data.split.sizes() == {"query": 1000, "database": 5873, "train": 5873}
    assert data.labels.sum(0).min() >= 20
    assert all(isinstance(t, str) and t for t in data.texts)


def _benchmark_arrays(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"I": rng.normal(size=(n, 8)), "T": rng.random((n, 12)), "L": rng.integers(0, 2, (n, 3))}


def test_pre_split_mat_file_keeps_its_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tr, te = _benchmark_arrays(rng, 40), _benchmark_arrays(rng, 10)
    path = tmp_path / "toy.mat"
    scipy.io.savemat(path, {f"{k}_tr": v for k, v in tr.items()} | {f"{k}_te": v for k, v in te.items()})
    data = load_mat(path, n_train=25)
    assert data.images.shape == (50, 8) and data.texts.shape == (50, 12)
    assert data.split.sizes() == {"query": 10, "database": 40, "train": 25}
    assert np.allclose(data.images[data.split.query], te["I"])
    assert np.array_equal(data.labels[data.split.database], (tr["L"] > 0).astype(np.uint8))


def test_dcmh_style_v73_files_are_read_transposed_and_split_with_a_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = _benchmark_arrays(rng, 60)
    for suffix, key, value in (("iall", "IAll", "I"), ("yall", "YAll", "T"), ("lall", "LAll", "L")):
        with h5py.File(tmp_path / f"toy-{suffix}.mat", "w") as f:
            f[key] = arrays[value].T  # MATLAB v7.3 stores column-major: h5py sees the transpose
    data = load_dataset(str(tmp_path / "toy"), n_query=10)
    assert np.allclose(data.images, arrays["I"]) and np.allclose(data.texts, arrays["T"])
    assert data.split.sizes()["query"] == 10 and len(data) == 60


def test_unknown_dataset_is_a_clear_error() -> None:
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# -- label layouts of .mat files -------------------------------------------------------------------------


def _labelled_file(tmp_path: Path, label_tr: np.ndarray, label_te: np.ndarray) -> Path:
    """A pre-split .mat file with random features for 12 training and 4 query items, and these labels."""
    rng = np.random.default_rng(2)
    arrays = {"I_tr": rng.normal(size=(12, 6)), "T_tr": rng.random((12, 4)), "L_tr": label_tr}
    arrays |= {"I_te": rng.normal(size=(4, 6)), "T_te": rng.random((4, 4)), "L_te": label_te}
    scipy.io.savemat(tmp_path / "labels.mat", arrays)
    return tmp_path / "labels.mat"


@pytest.mark.parametrize("as_row", [False, True])
def test_a_column_of_class_indices_becomes_one_hot(tmp_path: Path, as_row: bool) -> None:
    """Wikipedia's layout: one category 1..C per item (12×1, or 1×12 as MATLAB may store it)."""
    train = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], dtype=np.uint8)[:, None]
    test = np.array([3, 1, 2, 2], dtype=np.uint8)[:, None]  # highest index absent from the queries
    data = load_mat(_labelled_file(tmp_path, train.T if as_row else train, test.T if as_row else test))
    assert data.labels.shape == (16, 3) and data.labels.dtype == np.uint8
    assert (data.labels.sum(1) == 1).all()
    assert np.array_equal(data.labels[data.split.database].argmax(1) + 1, train[:, 0])
    assert np.array_equal(data.labels[data.split.query].argmax(1) + 1, test[:, 0])


def test_a_0_1_matrix_is_multi_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, test = rng.integers(0, 2, (12, 3)), rng.integers(0, 2, (4, 3))
    data = load_mat(_labelled_file(tmp_path, train, test))
    assert data.labels.shape == (16, 3)
    assert np.array_equal(data.labels[data.split.database], train)
    assert np.array_equal(data.labels[data.split.query], test)


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        (np.tile([0, 1], 6)[:, None], np.array([[0], [1], [1], [0]]), "could be one binary label or 0-based"),
        (np.tile([0, 1, 2], 4)[:, None], np.array([[0], [1], [2], [0]]), "must hold class indices 1..C"),
        (np.tile([1.5, 2.0], 6)[:, None], np.array([[1.0], [2.0], [1.0], [2.0]]), "class indices 1..C"),
        (np.tile([[1, -1], [-1, 1]], (6, 1)), np.array([[1, -1], [-1, 1], [1, -1], [1, -1]]), "must be 0/1"),
        (np.tile([[2, 0], [0, 1]], (6, 1)), np.array([[1, 0], [0, 1], [1, 0], [1, 0]]), "must be 0/1"),
        (np.tile([1, 2], 6)[:, None], np.eye(2, dtype=int)[[0, 1, 0, 1]], "mix class-index columns"),
        (np.eye(3, dtype=int)[np.arange(12) % 3], np.eye(2, dtype=int)[[0, 1, 0, 1]], "different numbers"),
    ],
    ids=["0-1 column", "0-based indices", "fractions", "plus-minus one", "counts", "mixed layouts", "widths"],
)
def test_label_layouts_it_cannot_tell_are_refused(
    tmp_path: Path, train: np.ndarray, test: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_mat(_labelled_file(tmp_path, train, test))


@pytest.mark.parametrize(
    ("train", "test"),
    [
        (np.full((12, 1), 4), np.full((4, 1), 4)),  # one class index for all: one-hot of a single class
        (np.tile([[1, 0, 1]], (12, 1)), np.tile([[1, 0, 1]], (4, 1))),  # the same label set everywhere
    ],
    ids=["one class index", "one label set"],
)
def test_labels_shared_by_every_item_are_refused(tmp_path: Path, train: np.ndarray, test: np.ndarray) -> None:
    """Every item relevant to every query would score every metric 1.0 (issue 15's symptom)."""
    with pytest.raises(ValueError, match=r"every item of .* has the same labels"):
        load_mat(_labelled_file(tmp_path, train, test))


def test_dcmh_labels_shared_by_every_item_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    arrays = {"iall": ("IAll", rng.normal(size=(20, 5))), "yall": ("YAll", rng.random((20, 3)))}
    arrays["lall"] = ("LAll", np.ones((20, 1)))
    for suffix, (key, value) in arrays.items():
        scipy.io.savemat(tmp_path / f"toy-{suffix}.mat", {key: value})
    with pytest.raises(ValueError, match="same labels"):
        load_dataset(str(tmp_path / "toy"), n_query=5)


# -- the Wikipedia benchmark (the real files, shipped in the repository's data/wikipedia/) ------------------


WIKIPEDIA_SHA256 = {
    "raw_features.mat": "047ebad02c14b97d53b191fd42180ebb9b0e255dbb2f70c6fe4092110b4c9853",
    "wiki_data.mat": "618dda68117816abb1264ca8dcf4350a547467d856ff6581d3d874bbf757dfc0",
    "trainset_txt_img_cat.list": "ca19aec01dd94a839abec1c4de2d35baf4ad53275ab0e5ee31bc76bcae4b67da",
    "testset_txt_img_cat.list": "ec3123ee31cc89dd95fbeb23eb73b2ecfd1d8909bba863723471aad99408c1eb",
}


@pytest.mark.shipped_data
def test_the_shipped_wikipedia_files_are_the_benchmarks_own_and_name_their_source() -> None:
    for name, digest in WIKIPEDIA_SHA256.items():
        assert hashlib.sha256((WIKIPEDIA_DIR / name).read_bytes()).hexdigest() == digest, name
    readme = (WIKIPEDIA_DIR / "README.md").read_text()
    assert "Rasiwasia" in readme and "@inproceedings" in readme


def _list_categories(name: str) -> np.ndarray:
    lines = (WIKIPEDIA_DIR / name).read_text().split("\n")
    return np.array([int(line.split("\t")[2]) for line in lines if line.strip()])


@pytest.mark.shipped_data
@pytest.mark.parametrize(("name", "text_dim"), [("wikipedia", 10), ("wikipedia-tfidf", 1000)])
def test_wikipedia_loads_by_name_with_the_papers_split(name: str, text_dim: int) -> None:
    data = load_dataset(name)
    assert data.name == name and len(data) == 2866
    assert data.images.shape == (2866, 128) and data.texts.shape == (2866, text_dim)
    assert data.split.sizes() == {"query": 693, "database": 2173, "train": 2173}
    assert np.array_equal(data.split.train, data.split.database)  # database = training set
    assert data.labels.shape == (2866, 10) and (data.labels.sum(1) == 1).all()  # one category each
    categories = data.labels.argmax(1) + 1
    assert np.array_equal(categories[data.split.query], _list_categories("testset_txt_img_cat.list"))
    assert np.array_equal(categories[data.split.database], _list_categories("trainset_txt_img_cat.list"))
    # Same-category relevance: a random ranking's precision is the category prior, far below 1.
    prior = relevance(data.labels[data.split.query], data.labels[data.split.database]).mean()
    assert 0.1 < prior < 0.15


@pytest.mark.shipped_data
def test_wikipedia_tfidf_keeps_the_images_and_labels_of_the_lda_variant() -> None:
    lda, tfidf = load_dataset("wikipedia"), load_dataset("wikipedia-tfidf")
    assert np.array_equal(lda.images, tfidf.images) and np.array_equal(lda.labels, tfidf.labels)
    assert (tfidf.texts >= 0).all() and 0 < (tfidf.texts > 0).mean() < 0.2  # sparse tf-idf rows


@pytest.mark.shipped_data
def test_training_on_wikipedia_by_name_gives_real_metrics(tmp_path: Path) -> None:
    """One short supervised run through the CLI: the metrics are far above the ~0.11 label prior and
    below 1.0 (with the index column read as one shared label, every metric used to be 1.0)."""
    command = ["train", "--method", "dsfh", "--dataset", "wikipedia", "--bits", "16", "--out", str(tmp_path)]
    command += ["--param", "n_anchors=300", "--param", "iterations=3"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    [row] = json.loads((tmp_path / "summary.json").read_text())
    for direction in ("i2t", "t2i"):
        for metric in ("mAP", "MAP@50", "P@10"):
            assert 0.18 < row[f"{direction}_{metric}"] < 0.95, (direction, metric, row)
    assert row["t2i_MAP@50"] > 0.4  # the 10-d LDA texts carry the category well
