"""Dataset loaders: the OpenClipart corpus (a tiny fake one, and the real Debian one) and .mat files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from training.datasets import DatasetNotFoundError, load_dataset, seeded_split
from training.datasets import openclipart as oc
from training.datasets.matfile import load_mat

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
