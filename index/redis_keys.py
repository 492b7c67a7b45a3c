"""Every Redis key name of the project, in one place: a module that reads or writes Redis asks here.

All keys of an index live under ``xmh:{index}:``. Under it:

- ``{bundle_id}:`` one bundle's code space (two bundles' codes never mix, :class:`BundleKeys`): ``active``
  names the generation readers use, ``rebuilding`` is set while a re-bucket copies items into the next one,
  ``import:{job}`` records a bulk import's done chunks, ``demo-corpus`` the demo corpus's progress;
- ``{bundle_id}:g{n}:`` one *generation* of it (one set of centers and the items bucketed by them,
  :class:`GenerationKeys`), whose layout ``index.store`` describes;
- ``run:{run_id}:{name}`` what the worker processes of one service run share; ``thumb:{item_id}`` an
  image's thumbnail and ``collections`` the registry of loaded collections (per index, not per bundle: a
  thumbnail shows the image whatever model hashes it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexKeys:
    """The keys of one index, whatever bundle serves it."""

    index_name: str

    @property
    def prefix(self) -> str:
        return f"xmh:{self.index_name}:"

    def bundle(self, bundle_id: str) -> BundleKeys:
        return BundleKeys(f"{self.prefix}{bundle_id}:")

    def run(self, run_id: str, name: str) -> str:
        """A key shared by the worker processes of one run of the service."""
        return f"{self.prefix}run:{run_id}:{name}"

    def thumbnail(self, item_id: str) -> str:
        return f"{self.prefix}thumb:{item_id}"

    @property
    def collections(self) -> str:
        return f"{self.prefix}collections"


@dataclass(frozen=True)
class BundleKeys:
    """The keys of one index under one bundle; ``base`` ends with a colon."""

    base: str

    @property
    def active(self) -> str:
        return self.base + "active"

    @property
    def rebuilding(self) -> str:
        return self.base + "rebuilding"

    @property
    def demo_corpus(self) -> str:
        return self.base + "demo-corpus"

    def import_progress(self, job: str) -> str:
        """An import's done chunks (chunk → the feed entry that wrote it). Under the bundle, not the
        generation: a re-bucket copies a done chunk's items, so it stays done."""
        return f"{self.base}import:{job}"

    def generation(self, number: int) -> GenerationKeys:
        return GenerationKeys(f"{self.base}g{number}:")


@dataclass(frozen=True)
class GenerationKeys:
    """The keys of one generation; ``prefix`` ends with a colon (every key of it starts with it)."""

    prefix: str

    def items(self, modality: str) -> str:
        return f"{self.prefix}items:{modality}"

    def entries(self, modality: str) -> str:
        return f"{self.prefix}entries:{modality}"

    def counts(self, modality: str) -> str:
        return f"{self.prefix}counts:{modality}"

    def former_meta(self, modality: str) -> str:
        """The former layout's id → metadata hash (``index.layout_upgrade``)."""
        return f"{self.prefix}meta:{modality}"

    def former_labels(self, modality: str) -> str:
        """The former layout's label → id hash (``index.layout_upgrade``)."""
        return f"{self.prefix}labels:{modality}"

    @property
    def centers(self) -> str:
        return self.prefix + "centers"

    @property
    def info(self) -> str:
        return self.prefix + "info"

    @property
    def next_label(self) -> str:
        return self.prefix + "next_label"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    @property
    def feed(self) -> str:
        return self.prefix + "feed"
