"""What a dataset card says about each source: license, citation, home page.

``KNOWN_SOURCES`` holds the public screens cytodata has adapters for, keyed by the source id
a manifest gives them by default (the adapter name). A license is listed only where the
provider states one we could check; elsewhere it is None and the card says "unknown" (pass
``licenses={"bbbc021": "CC-BY-NC-SA-3.0"}`` / ``--license bbbc021=...`` once you have checked).
Recipes can also carry ``license:`` / ``citation:`` / ``url:`` per source (see recipe.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .._registry import Registry


@dataclass(frozen=True)
class SourceInfo:
    """License (SPDX id or None for unknown), citation text and home page of one source."""

    license: str | None = None
    citation: str | None = None
    url: str | None = None


#: source id -> SourceInfo for the public screens cytodata reads
KNOWN_SOURCES: Registry[SourceInfo] = Registry("known source")

KNOWN_SOURCES.register("bbbc021")(SourceInfo(
    license=None,  # stated on the BBBC021 page; check it there and pass --license bbbc021=ID
    citation="Caie PD et al. (2010) High-content phenotypic profiling of drug response signatures "
             "across distinct cancer cells. Mol Cancer Ther 9(6):1913-1926; Ljosa V, Sokolnicki KL, "
             "Carpenter AE (2012) Annotated high-throughput microscopy image sets for validation. "
             "Nat Methods 9:637",
    url="https://bbbc.broadinstitute.org/BBBC021"))
KNOWN_SOURCES.register("rxrx1")(SourceInfo(
    license="CC-BY-NC-SA-4.0",
    citation="Sypetkowski M et al. (2023) RxRx1: A Dataset for Evaluating Experimental Batch "
             "Correction Methods. CVPR Workshops",
    url="https://www.rxrx.ai/rxrx1"))
KNOWN_SOURCES.register("jump")(SourceInfo(
    license="CC0-1.0",
    citation="Chandrasekaran SN et al. (2023) JUMP Cell Painting dataset: morphological impact of "
             "136,000 chemical and genetic perturbations. bioRxiv 10.1101/2023.03.23.534023",
    url="https://registry.opendata.aws/cellpainting-gallery/"))
KNOWN_SOURCES.register("cytoimagenet")(SourceInfo(
    license=None,
    citation="Hua SBZ, Lu AX, Moses AM (2021) CytoImageNet: A large-scale pretraining dataset for "
             "bioimage transfer learning. arXiv:2111.11646",
    url="https://www.kaggle.com/datasets/stanleyhua/cytoimagenet"))

#: SPDX id (lower case) -> license URL, for Croissant's ``license`` and the card
LICENSE_URLS: dict[str, str] = {
    "cc0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "cc-by-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "cc-by-3.0": "https://creativecommons.org/licenses/by/3.0/",
    "cc-by-sa-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "cc-by-nc-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "cc-by-nc-sa-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "cc-by-nc-sa-3.0": "https://creativecommons.org/licenses/by-nc-sa/3.0/",
    "mit": "https://opensource.org/licenses/MIT",
    "bsd-3-clause": "https://opensource.org/licenses/BSD-3-Clause",
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
}


def resolve_sources(names: list[str], *, recipe_sources: dict[str, dict] | None = None,
                    licenses: dict[str, str] | None = None,
                    citations: dict[str, str] | None = None) -> dict[str, SourceInfo]:
    """SourceInfo per source id: explicit arguments, then the recipe, then KNOWN_SOURCES.

    ``recipe_sources``: source id -> the recipe's source entry (``license``/``citation``/``url``
    keys are read when present). Unknown licenses stay None (the card says "unknown").
    """
    recipe_sources = recipe_sources or {}
    licenses, citations = dict(licenses or {}), dict(citations or {})
    extra = sorted((set(licenses) | set(citations)) - set(names))
    if extra:
        raise ValueError(f"--license/--citation name sources {extra} that are not in this shard set; "
                         f"its sources are {sorted(names)}")
    out = {}
    for name in names:
        info = KNOWN_SOURCES.get(name) if name in KNOWN_SOURCES else SourceInfo()
        spec = recipe_sources.get(name) or {}
        info = replace(info, **{k: str(spec[k]) for k in ("license", "citation", "url") if spec.get(k)})
        if name in licenses:
            info = replace(info, license=licenses[name])
        if name in citations:
            info = replace(info, citation=citations[name])
        out[name] = info
    return out


def hf_license_id(spdx: str | None) -> str:
    """Hugging Face card license id: lower-case SPDX, ``unknown`` when None."""
    return spdx.lower() if spdx else "unknown"
