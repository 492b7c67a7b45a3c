"""``python -m training``: dataset statistics, training runs and code evaluation."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from index.codes import check_code_bits
from training.registry import TRAINERS

if TYPE_CHECKING:  # the command imports them on use: `python -m training --help` stays fast
    from training.datasets import CrossModalDataset
    from training.featurize.pipeline import FeatureSet

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class Features(StrEnum):
    """Featurizers of a raw corpus: the pretrained encoders (OpenClipart's default) or the classic ones."""

    pretrained = "pretrained"
    classic = "classic"


DATASET_HELP = (
    "openclipart, a collection manifest (.jsonl, or a folder with manifest.jsonl), a .mat path, "
    "or a benchmark name under data/ (wikipedia, wikipedia-tfidf) or ../shared/data"
)
FEATURES_HELP = "featurizers of a raw corpus (default: the dataset's own; OpenClipart: pretrained)"


Method = StrEnum("Method", {name.replace("-", "_"): name for name in TRAINERS})  # the registry's, as choices


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command()
def datasets(
    name: Annotated[str, typer.Argument(help=DATASET_HELP)],
    stats: Annotated[bool, typer.Option("--stats", help="featurize and print statistics")] = False,
    seed: int = 0,
    features_kind: Annotated[Features | None, typer.Option("--features", help=FEATURES_HELP)] = None,
) -> None:
    """Load a dataset with its standard split and print its statistics as JSON."""
    from training.datasets import DatasetNotFoundError, load_dataset
    from training.evaluation.metrics import relevance
    from training.featurize.pipeline import featurize

    try:
        dataset = load_dataset(name, seed=seed)
    except (DatasetNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    summary = dataset.summary()
    if stats:
        features = featurize(dataset, kind=features_kind)
        summary |= features.describe()
        if features.describe()["text_featurizer"] == "bag-of-words":
            summary["vocabulary_size"] = features.text_featurizer.dim
        counts = dataset.labels.sum(0)
        if counts.size:  # an unlabelled collection has no label statistics
            summary["label_members"] = {"min": int(counts.min()), "max": int(counts.max())}
            query, database = dataset.labels[dataset.split.query], dataset.labels[dataset.split.database]
            # Expected precision of a random ranking: the floor every precision figure is read against.
            summary["label_prior"] = round(float(relevance(query, database).mean()), 4)
    typer.echo(json.dumps(summary, indent=2))


def default_method(labelled: bool) -> Method:
    """Supervised DSFH when the dataset has labels (it learns from them and trains in seconds), else the
    unsupervised UDDH (docs/collections.md)."""
    return Method.dsfh if labelled else Method.uddh


def _report_skipped(dataset, out: Path) -> None:
    """A collection's skipped rows: counted on the terminal, listed with their reasons in ``skipped_rows.json``."""
    rows = dataset.stats.get("skipped_rows")
    if not rows:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "skipped_rows.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    typer.secho(f"{len(rows)} rows skipped (listed with their reasons in {out / 'skipped_rows.json'}):", err=True)
    for row in rows[:SKIPPED_SHOWN]:
        typer.echo(f"  line {row['line']} ({row['id'] or 'no id'}): {row['reason']}", err=True)


SKIPPED_SHOWN = 20  # skipped rows printed on the terminal; the file lists them all


def _report_split(dataset) -> None:
    """The split's sizes before the long featurizing starts, so a wrong split is seen at once."""
    sizes = dataset.split.sizes()
    source = dataset.stats.get("split_from")
    typer.echo(
        f"split: {sizes['train']} train, {sizes['query']} query, {sizes['database']} database "
        f"(train items are in the database too){f'; {source}' if source else ''}",
        err=True,
    )


def _code_lengths(lengths: list[int]) -> list[int]:
    """``--bits`` checked where the length is born, not when the bundle it makes is loaded."""
    try:
        return [check_code_bits(length) for length in lengths]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help=DATASET_HELP)],
    out: Annotated[Path, typer.Option(help="output folder; one sub-folder per code length")],
    method: Annotated[
        Method | None, typer.Option(help="hashing method (default: dsfh when the dataset has labels, else uddh)")
    ] = None,
    bits: Annotated[
        list[int], typer.Option(help="code length, a multiple of 8; repeat for several", callback=_code_lengths)
    ] = [64],  # noqa: B006
    param: Annotated[
        list[str] | None, typer.Option(help="config override KEY=VALUE (a number or text); repeatable")
    ] = None,
    seed: int = 0,
    features_kind: Annotated[Features | None, typer.Option("--features", help=FEATURES_HELP)] = None,
) -> None:
    """Train a method at each code length, evaluate it both ways (when the dataset has labels), and write
    per code length a model bundle (``<out>/<bits>bits/bundle``) with its metrics JSON and plots beside it."""
    from training.bundle.writer import write_bundle
    from training.datasets import DatasetNotFoundError, load_dataset
    from training.evaluation.report import evaluate_hasher, markdown_table, plot_history, summary_row, write_report
    from training.featurize.pipeline import featurize

    params = parse_params(param or [])
    try:
        data = load_dataset(dataset, seed=seed)
        _report_split(data)
        features = featurize(data, kind=features_kind)
    except (DatasetNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    _report_skipped(data, out)
    labelled = bool(data.labels.any())
    if method is None:
        method = default_method(labelled)
        typer.echo(f"method: {method.value} (the dataset {'has' if labelled else 'has no'} labels)", err=True)
    if not labelled:
        typer.echo("no labels: no retrieval metrics (mAP, precision) can be computed; none are reported", err=True)
    rows = []
    for length in bits:
        started = time.perf_counter()
        try:
            hasher = TRAINERS[method.value](features, length, seed, params)
        except (ValueError, TypeError) as exc:
            raise _fail(str(exc)) from exc
        seconds = time.perf_counter() - started
        metrics = evaluate_hasher(hasher, features) if labelled else {}
        run = out / f"{length}bits"
        run.mkdir(parents=True, exist_ok=True)
        if labelled:
            write_report(metrics, run, f"{method.value} {length} bits")
        plot_history(hasher.history, f"{method.value} {length} bits: training", run / "history.png")
        row = summary_row(method.value, length, metrics) | {"train_seconds": round(seconds, 2)}
        manifest = write_bundle(run / "bundle", hasher, features, row)
        instance = _instance_summary(run / "bundle", features, data) if labelled and data.text_kind == "raw" else {}
        rows.append(row | instance | {"bundle_id": manifest.bundle_id})
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    typer.echo(markdown_table(rows))


EXPORT_HELP = "the corpus to export: openclipart, or tuxpaint (the stamps of Debian's tuxpaint-stamps-default)"


def _instance_summary(bundle: Path, features: FeatureSet, data: CrossModalDataset) -> dict:
    """R@10 of a held-out item's own pair against all items, both ways, as the written bundle serves it
    (``python -m training instance`` gives the whole table)."""
    from index.bundle import load_bundle
    from training.evaluation.instance import bundle_instance_table, served_real_codes, text_groups

    model = load_bundle(bundle)
    real = served_real_codes(model, features)
    table = bundle_instance_table(model, real, features, text_groups(list(data.texts)), str(bundle))
    return {f"{row['direction']}_R@10": row["R@10"] for row in table if row["database"] == "all"}


@app.command("export-collection")
def export_collection(
    name: Annotated[str, typer.Argument(help=EXPORT_HELP)],
    out: Annotated[Path, typer.Argument(help="folder for manifest.jsonl and the symlink to the images")],
    seed: int = 0,
) -> None:
    """Write a corpus installed on this machine as a collection (docs/collections.md): manifest.jsonl and a
    symlink to its images, nothing copied; train on it and load it like any collection."""
    from training.datasets import DatasetNotFoundError
    from training.datasets.openclipart import export_collection as export_openclipart
    from training.datasets.tuxpaint import export_collection as export_tuxpaint

    exporters = {"openclipart": export_openclipart, "tuxpaint": export_tuxpaint}
    if name not in exporters:
        raise _fail(f"unknown corpus {name!r}: one of {', '.join(exporters)} can be exported")
    try:
        manifest, counts = exporters[name](out, seed=seed)
    except DatasetNotFoundError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{manifest}: " + ", ".join(f"{count} {what}" for what, count in counts.items()))


def parse_params(items: list[str]) -> dict:
    """``["n_anchors=500", "alpha=1e-4"]`` → ``{"n_anchors": 500, "alpha": 0.0001}``."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--param wants KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@app.command()
def evaluate(
    codes: Annotated[
        Path,
        typer.Argument(
            help=".npz with query_image, query_text, database_image, "
            "database_text ({-1,+1} or real), query_labels, database_labels"
        ),
    ],
    out: Annotated[Path, typer.Option(help="folder for metrics.json and the PNG plots")],
) -> None:
    """Evaluate a set of codes in both directions: metrics JSON and PR / precision@top-N plots."""
    from index.codes import to_signs
    from training.evaluation.report import evaluate_directions, write_report

    if not codes.is_file():
        raise _fail(f"no such file: {codes}")
    with np.load(codes, allow_pickle=False) as data:
        missing = {
            "query_image",
            "query_text",
            "database_image",
            "database_text",
            "query_labels",
            "database_labels",
        } - set(data.files)
        if missing:
            raise _fail(f"{codes} lacks arrays {sorted(missing)}")
        signs = {k: to_signs(data[k]) for k in ("query_image", "query_text", "database_image", "database_text")}
        metrics = evaluate_directions(signs, data["query_labels"], data["database_labels"])
    write_report(metrics, out, codes.stem)
    typer.echo(
        json.dumps({d: {k: v for k, v in m.items() if not isinstance(v, dict)} for d, m in metrics.items()}, indent=2)
    )


@app.command()
def featurizers(
    bundle: Annotated[Path, typer.Argument(help="a bundle folder whose manifest names pretrained featurizers")],
) -> None:
    """Build a bundle's pretrained featurizer files (ONNX graphs, tokenizer) from the installed weight
    packages, deterministically, and check each against the sha256 in its manifest."""
    from index.bundle.reader import BundleError, read_manifest
    from training.featurize.pretrained import install_featurizer_files

    installed = 0
    try:
        for name, digest in install_featurizer_files(bundle, read_manifest(bundle)):
            typer.echo(f"{bundle / name}: sha256 {digest} as in the manifest")
            installed += 1
    except (BundleError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if not installed:
        typer.echo(f"{bundle}: no pretrained featurizers to build")


@app.command("semantic-index")
def semantic_index(
    bundle: Annotated[Path, typer.Option(help="a bundle (UDDH: its head code and centers)")],
    probes: Annotated[list[int], typer.Option("--probe", help="buckets a query scans; repeatable")] = [1, 2, 4],  # noqa: B006
    seed: int = 0,
) -> None:
    """Metrics of retrieval restricted to each query's nearest semantic bucket(s), both directions."""
    from index.bundle import load_bundle
    from training.datasets import load_dataset
    from training.evaluation.report import markdown_table
    from training.evaluation.semantic_index import semantic_index_rows
    from training.featurize.pipeline import bundle_features_kind, featurize

    model = load_bundle(bundle)
    dataset = load_dataset(model.manifest.training.dataset, seed=seed)
    features = featurize(dataset, kind=bundle_features_kind(model.manifest))
    typer.echo(markdown_table(semantic_index_rows(model, features, probes)))


@app.command("instance")
def instance(
    bundle: Annotated[list[Path], typer.Option(help="a bundle to compare; repeat for several (one run, one table)")],
    dataset: Annotated[str | None, typer.Option(help=DATASET_HELP + " (default: the first bundle's)")] = None,
    seed: int = 0,
) -> None:
    """Instance-level retrieval, as served: does a held-out item's text find its own image (t2i) and its image
    its own text (i2t)? R@1/5/10/50 and the median rank (ties in expectation), recall counting any item with
    the identical text as a hit, category P@10, against all items and against the held-out items only; then
    how well each bundle's codes tell items apart (distinct codes, tie group at the pair, bucket sizes)."""
    from index.bundle import load_bundle
    from training.datasets import load_dataset
    from training.evaluation.instance import (
        bundle_code_statistics,
        bundle_instance_table,
        served_real_codes,
        text_groups,
    )
    from training.evaluation.report import markdown_table
    from training.featurize.pipeline import bundle_features_kind, featurize

    models = [load_bundle(path) for path in bundle]
    data = load_dataset(dataset or models[0].manifest.training.dataset, seed=seed)
    groups = text_groups(list(data.texts)) if data.text_kind == "raw" else np.arange(len(data.labels))
    features = {}
    rows, statistics = [], []
    for path, model in zip(bundle, models, strict=True):
        kind = bundle_features_kind(model.manifest)
        features.setdefault(kind, featurize(data, kind=kind))
        name = f"{path} ({model.method} {model.bits})"
        real = served_real_codes(model, features[kind])  # one run of each graph serves both tables
        rows += bundle_instance_table(model, real, features[kind], groups, name)
        statistics.append(bundle_code_statistics(model, real, features[kind], name))
    typer.echo(markdown_table(rows))
    typer.echo("")
    typer.echo(markdown_table(statistics))


@app.command("natural-queries")
def natural_queries(
    bundle: Annotated[Path, typer.Option(help="a bundle trained on a raw-text dataset (OpenClipart)")],
    seed: int = 0,
) -> None:
    """How a bundle answers short queries: P@10 per natural query (Hamming over the whole database,
    asymmetric, and the text encoder's own nearest texts), then text→image metrics with the held-out
    items' short text views as queries."""
    from index.bundle import load_bundle
    from training.datasets import load_dataset
    from training.evaluation.natural_queries import natural_query_table, short_text_metrics
    from training.evaluation.report import markdown_table
    from training.featurize.pipeline import bundle_features_kind, featurize

    model = load_bundle(bundle)
    dataset = load_dataset(model.manifest.training.dataset, seed=seed)
    features = featurize(dataset, kind=bundle_features_kind(model.manifest))
    texts = [dataset.texts[i] for i in dataset.split.database]
    rows = sorted(natural_query_table(model, features, dataset.label_names, texts), key=lambda row: row["hamming"])
    numeric = [key for key in rows[0] if key not in ("query", "label")]
    means = {key: round(float(np.nanmean([row[key] for row in rows])), 3) for key in numeric}
    typer.echo(markdown_table([*rows, {"query": "**mean**", "label": ""} | means]))
    typer.echo("")
    typer.echo(markdown_table(short_text_metrics(model, features)))
