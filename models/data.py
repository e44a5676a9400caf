"""Per-frame feature datasets for online action detection: readers and window sampling.

A dataset is a list of videos, each a ``(T, D)`` float32 feature array (one row per feature
step, e.g. 6 frames at 24 fps for THUMOS14) and a ``(T, C)`` per-frame target array (one-hot or
multi-hot), plus the class names and which class is Background / Ambiguous.

Layouts read by :func:`load_dataset` (nothing is ever unpickled; ``.npy``/``.npz`` files are
opened with ``allow_pickle=False``):

1. **Plain ``.npz`` per video** (costream's own; the synthetic generator writes it)::

       DATA/
         dataset.json        # optional: {"class_names": [...], "background": 0, "ambiguous": null}
         train/<video>.npz   # arrays "features" (T, D) float, "targets" (T, C) one-hot
         test/<video>.npz

   A split is a sub-folder; a folder of ``.npz`` files with no split sub-folders is one split.

2. **LSTR / TeSTra layout** (the features used by LSTR, TeSTra and the CoOadTR follow-ups)::

       DATA/                                  # e.g. data/THUMOS or data/TVSeries
         rgb_kinetics_resnet50/<video>.npy    # (T, 2048)   (or rgb_anet_resnet50/ ...)
         flow_kinetics_bninception/<video>.npy  # (T, 1024) (or flow_anet_resnet50/ ...)
         target_perframe/<video>.npy          # (T, 22) THUMOS14, (T, 31) TVSeries, one-hot
         data_info.json                       # optional, LSTR's file (see below)

   Features are ``concat(rgb, flow)`` per step (docs/continual-attention.md#the-oad-model-and-its-protocol; 3072 for RGB 2048 + flow 1024).
   There must be exactly one ``rgb_*`` and at most one ``flow_*`` folder, or pass ``rgb=`` and
   ``flow=`` explicitly. Splits: LSTR's ``data_info.json`` (a top-level object per dataset with
   ``class_names``, ``ignore_index`` and ``train_session_set`` / ``test_session_set``) in DATA or
   its parent; without one, THUMOS14 names decide (``video_validation_*`` = train,
   ``video_test_*`` = test), otherwise every video is in every split. The class list defaults to
   THUMOS14's 22 classes (Background first, Ambiguous last) when targets have 22 columns, and
   TVSeries' 31 (Background first, no Ambiguous) when they have 31.

3. **OadTR / CoOadTR pickles** (``thumos_all_feature_{train,test}_V3.pickle``,
   ``thumos_{train,test}_anno*.pickle``) are *refused*: unpickling runs arbitrary code. Convert
   them once, in an environment where you trust the files, to layout 1::

       import pickle, numpy as np, pathlib
       feats = pickle.load(open("thumos_all_feature_test_V3.pickle", "rb"))
       annos = pickle.load(open("thumos_test_anno_multiclass.pickle", "rb"))
       out = pathlib.Path("DATA/test"); out.mkdir(parents=True, exist_ok=True)
       for vid, f in feats.items():
           x = np.concatenate([f["rgb"], f["flow"]], axis=1).astype(np.float32)
           np.savez(out / f"{vid}.npz", features=x, targets=annos[vid]["anno"].astype(np.float32))
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "THUMOS14_CLASSES",
    "TVSERIES_CLASSES",
    "DataFormatError",
    "OadDataset",
    "Video",
    "load_dataset",
    "one_hot",
    "read_lstr",
    "read_npz_dir",
    "write_npz_dir",
]

THUMOS14_CLASSES = [
    "Background", "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow",
    "HighJump", "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty",
    "TennisSwing", "ThrowDiscus", "VolleyballSpiking", "Ambiguous",
]  # fmt: skip
TVSERIES_CLASSES = [
    "Background", "Pick something up", "Point", "Drink", "Stand up", "Run", "Sit down", "Read",
    "Smoke", "Drive car", "Open door", "Give something", "Use computer", "Write",
    "Go down stairway", "Close door", "Throw something", "Go up stairway", "Get in/out of car",
    "Hang up phone", "Eat", "Answer phone", "Dress up", "Clap", "Undress", "Kiss", "Fall/trip",
    "Wave", "Pour", "Punch", "Fire weapon",
]  # fmt: skip


class DataFormatError(ValueError):
    """A dataset folder or file does not have the expected layout, shapes or dtypes."""


@dataclass
class Video:
    """One video: ``features`` (T, D) float32 and ``targets`` (T, C) float32 per-frame labels."""

    name: str
    features: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.targets.ndim != 2:
            raise DataFormatError(
                f"Video {self.name!r}: features must be (T, D) and targets (T, C), got "
                f"{self.features.shape} and {self.targets.shape}."
            )
        if self.features.shape[0] != self.targets.shape[0]:
            raise DataFormatError(
                f"Video {self.name!r} has {self.features.shape[0]} feature steps but "
                f"{self.targets.shape[0]} target rows; they must be equal."
            )
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.targets = np.ascontiguousarray(self.targets, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class OadDataset:
    """Videos plus class metadata (Background / Ambiguous indices, None when absent)."""

    videos: list[Video]
    class_names: list[str]
    background: int | None = 0
    ambiguous: int | None = None
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.videos:
            raise DataFormatError(f"Dataset {self.source or '(in memory)'} has no videos.")
        D, C = self.videos[0].features.shape[1], self.videos[0].targets.shape[1]
        for v in self.videos:
            if v.features.shape[1] != D or v.targets.shape[1] != C:
                raise DataFormatError(
                    f"Video {v.name!r} has feature dim {v.features.shape[1]} / {v.targets.shape[1]} "
                    f"classes, but the first video has {D} / {C}; all videos must agree."
                )
        if len(self.class_names) != C:
            raise DataFormatError(
                f"{len(self.class_names)} class names for targets with {C} columns."
            )

    @property
    def feature_dim(self) -> int:
        """D: feature size per step."""
        return int(self.videos[0].features.shape[1])

    @property
    def num_classes(self) -> int:
        """C: number of target classes (including Background / Ambiguous)."""
        return int(self.videos[0].targets.shape[1])

    @property
    def num_frames(self) -> int:
        """Total feature steps over all videos."""
        return sum(len(v) for v in self.videos)

    def __iter__(self) -> Iterator[Video]:
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)

    def meta(self) -> dict:
        """Class metadata as stored in ``dataset.json`` and model cards."""
        return {
            "class_names": self.class_names,
            "background": self.background,
            "ambiguous": self.ambiguous,
        }


# -- plain .npz per video -------------------------------------------------------------------------
def one_hot(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(T, C) float32 one-hot targets of per-frame ``labels`` over ``classes``."""
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise DataFormatError(f"Labels {unknown} are not among the classes {list(classes)}.")
    y = np.zeros((len(labels), len(classes)), np.float32)
    y[np.arange(len(labels)), [index[lab] for lab in labels]] = 1.0
    return y


def _read_meta(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise DataFormatError(f"{path} is not valid JSON: {e}.") from e


def _load_npz(path: Path) -> Video:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"features", "targets"} - set(z.files)
            if missing:
                raise DataFormatError(
                    f"{path} lacks array(s) {sorted(missing)}; a video .npz needs 'features' (T, D) "
                    f"and 'targets' (T, C). It has {sorted(z.files)}."
                )
            return Video(path.stem, z["features"], z["targets"])
    except ValueError as e:  # object arrays need pickle: refuse
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path} could not be read without unpickling: {e}.") from e


def read_npz_dir(root: str | Path, split: str | None = None) -> OadDataset:
    """Read layout 1: ``root/<split>/*.npz`` (or ``root/*.npz``) plus optional ``dataset.json``."""
    root = Path(root)
    folder = root / split if split and (root / split).is_dir() else root
    if split and folder == root and any(p.is_dir() for p in root.iterdir()):
        splits = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.npz")))
        raise DataFormatError(f"{root} has no split {split!r}; available splits: {splits}.")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise DataFormatError(f"No .npz videos in {folder}.")
    meta = _read_meta(root)
    videos = [_load_npz(f) for f in files]
    C = videos[0].targets.shape[1]
    names = meta.get("class_names") or (["Background"] + [f"action_{c}" for c in range(1, C)])
    return OadDataset(
        videos,
        list(names),
        background=meta.get("background", 0),
        ambiguous=meta.get("ambiguous"),
        source=str(folder),
        notes={k: str(v) for k, v in meta.get("notes", {}).items()},
    )


def write_npz_dir(dataset: OadDataset, root: str | Path, split: str) -> Path:
    """Write ``dataset`` as ``root/<split>/<video>.npz`` and (re)write ``root/dataset.json``."""
    root = Path(root)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for v in dataset.videos:
        np.savez(folder / f"{v.name}.npz", features=v.features, targets=v.targets)
    meta = dataset.meta() | {"notes": dataset.notes}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return folder


# -- LSTR layout ----------------------------------------------------------------------------------
def _one_dir(root: Path, prefix: str, given: str | None, required: bool) -> Path | None:
    if given:
        d = root / given
        if not d.is_dir():
            raise DataFormatError(f"Feature folder {d} does not exist.")
        return d
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if len(found) > 1:
        raise DataFormatError(
            f"{root} has several {prefix}* folders {[p.name for p in found]}; choose one explicitly."
        )
    if not found and required:
        raise DataFormatError(f"{root} has no {prefix}* feature folder (LSTR layout).")
    return found[0] if found else None


def _lstr_info(root: Path, C: int) -> tuple[dict, str]:
    for path in (root / "data_info.json", root.parent / "data_info.json"):
        if path.is_file():
            info = json.loads(path.read_text())
            entries = [
                v for v in info.values() if isinstance(v, dict) and v.get("num_classes", C) == C
            ]
            named = [
                v for k, v in info.items() if k.lower() in root.name.lower() and isinstance(v, dict)
            ]
            pick = named or entries
            if pick:
                return pick[0], str(path)
    return {}, ""


def read_lstr(
    root: str | Path,
    split: str | None = "train",
    *,
    rgb: str | None = None,
    flow: str | None = None,
    target: str = "target_perframe",
) -> OadDataset:
    """Read layout 2 (LSTR/TeSTra): ``rgb_*/``, ``flow_*/`` and ``target_perframe/`` ``.npy`` files."""
    root = Path(root)
    tdir = root / target
    if not tdir.is_dir():
        raise DataFormatError(f"{root} has no {target}/ folder (LSTR layout).")
    rdir = _one_dir(root, "rgb_", rgb, required=True)
    assert rdir is not None  # required=True raises instead of returning None
    fdir = _one_dir(root, "flow_", flow, required=False)
    names = sorted(p.stem for p in tdir.glob("*.npy"))
    if not names:
        raise DataFormatError(f"No .npy targets in {tdir}.")
    C = np.load(tdir / f"{names[0]}.npy", allow_pickle=False).shape[1]
    info, info_path = _lstr_info(root, C)
    if split:
        key = f"{split}_session_set"
        if info and key in info:
            sessions = set(info[key])
        elif any(n.startswith("video_validation_") for n in names):
            prefix = {"train": "video_validation_", "test": "video_test_"}.get(split)
            if prefix is None:
                raise DataFormatError(
                    f"Split {split!r} is unknown for THUMOS14 names; use train or test."
                )
            sessions = {n for n in names if n.startswith(prefix)}
        else:
            sessions = set(names)
        names = [n for n in names if n in sessions]
    videos = []
    for n in names:
        parts = [np.load(rdir / f"{n}.npy", allow_pickle=False)]
        if fdir is not None:
            parts.append(np.load(fdir / f"{n}.npy", allow_pickle=False))
        T = min(len(p) for p in parts)
        y = np.load(tdir / f"{n}.npy", allow_pickle=False)
        if abs(len(y) - T) > 1 or any(abs(len(p) - T) > 1 for p in parts):
            raise DataFormatError(
                f"Video {n}: rgb/flow/target lengths {[len(p) for p in parts]} / {len(y)} differ."
            )
        T = min(T, len(y))  # LSTR tolerates an off-by-one between streams: crop to the shortest
        videos.append(Video(n, np.concatenate([p[:T] for p in parts], axis=1), y[:T]))
    if not videos:
        raise DataFormatError(f"No videos of split {split!r} in {root}.")
    if info.get("class_names"):
        class_names = list(info["class_names"])
    elif C == 22:
        class_names = list(THUMOS14_CLASSES)
    elif C == 31:
        class_names = list(TVSERIES_CLASSES)
    else:
        class_names = ["Background"] + [f"action_{c}" for c in range(1, C)]
    ignore = info.get("ignore_index", 21 if class_names == THUMOS14_CLASSES else None)
    ambiguous = ignore if isinstance(ignore, int) and 0 <= ignore < C else None
    notes = {"layout": "lstr", "rgb": rdir.name, "flow": fdir.name if fdir else ""}
    if info_path:
        notes["data_info"] = info_path
    return OadDataset(videos, class_names, 0, ambiguous, source=str(root), notes=notes)


def load_dataset(path: str | Path, split: str | None = "train") -> OadDataset:
    """Read a dataset in any supported layout (see the module docstring); ``split`` picks a subset."""
    path = Path(path)
    if path.suffix in {".pickle", ".pkl"} or (path.is_dir() and any(path.glob("*.pickle"))):
        raise DataFormatError(
            f"{path}: OadTR pickles are not read, because unpickling can run arbitrary code. Convert "
            "them once to per-video .npz files (see costream.models.data's docstring for a snippet)."
        )
    if not path.is_dir():
        raise DataFormatError(f"Dataset path {path} is not a folder.")
    if (path / "target_perframe").is_dir():
        return read_lstr(path, split)
    return read_npz_dir(path, split)
