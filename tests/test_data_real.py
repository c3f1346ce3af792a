"""Real-data loaders on tiny files written here: the DVBPR release pickle and a dataset folder."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aipray.config import Component, ConfigError, parse_sweep
from aipray.data import DATASETS, Catalog
from aipray.data import images as images_mod
from aipray.data.common import COLD_RULE
from aipray.data.dvbpr import AmazonMenConfig, TradesyConfig, load_dvbpr
from aipray.data.folder import FolderConfig, load_folder, read_interactions
from aipray.data.images import shrink_npy

SIZE = 16  # decoded image side in these tests


def color(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-friendly solid colour per source item."""
    palette = [
        (200, 30, 30),
        (30, 180, 40),
        (40, 60, 210),
        (220, 200, 40),
        (150, 40, 170),
        (30, 170, 170),
        (240, 130, 20),
        (120, 120, 120),
        (250, 250, 250),
        (10, 10, 10),
        (90, 200, 120),
        (170, 110, 60),
    ]
    return palette[i % len(palette)]


def jpeg(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: int(len(data) * 0.6)]


def assert_colours(images: np.ndarray, colours: list[tuple[int, int, int]]) -> None:
    assert images.shape == (len(colours), 3, SIZE, SIZE)
    for img, rgb in zip(images, colours, strict=True):
        diff = np.abs(img.astype(int) - np.array(rgb)[:, None, None])
        assert diff.max() <= 10, (rgb, img.reshape(3, -1).mean(axis=1))


def per_user(catalog: Catalog) -> list[set[int]]:
    return [
        set(catalog.train_items[catalog.train_users == u].tolist()) for u in range(catalog.n_users)
    ]


def assert_cold_is_cold(catalog: Catalog) -> None:
    cold = set(catalog.cold_items.tolist())
    assert cold, "no cold items"
    assert not cold & set(catalog.train_items.tolist())
    assert not cold & set(catalog.val_items.tolist())
    assert not cold & set(catalog.test_items.tolist())


# --- the DVBPR release ----------------------------------------------------------------------------
#: Source items 5 (not a JPEG) and 7 (truncated) are corrupt, 9 has no image; 11 has no interaction.
DVBPR_USERS = {  # user: (train, validation, test)
    0: ([0, 1, 2], 3, 4),
    1: ([1, 5, 6], 2, 0),  # 5 is corrupt: train becomes [1, 6]
    2: ([7], 6, 1),  # 7 is truncated: no training item left, dropped
    3: ([0, 2], 9, 6),  # validation item 9 has no image: dropped
    4: ([3, 4, 6, 8], 10, 2),  # validation item 10 is cold with DVBPR_SEED: dropped
    5: ([10, 0], 1, 3),  # 10 is cold: train becomes [0]
}
N_SOURCE_ITEMS = 12
#: The cold rule draws items {8, 10} from the eligible {0, 1, 2, 3, 4, 6, 8, 10} with this seed.
DVBPR_SEED = 13


def record(item: int) -> dict[bytes, object]:
    return {b"productid": item, b"reviewerID": b"A1B2", b"asin": b"B000X", b"time": 1234}


def write_dvbpr(path: Path, *, as_lists: bool = False) -> Path:
    """A Python-2-style release: bytes keys, JPEG bytes, one pickled object array."""
    train = {u: [record(i) for i in tr] for u, (tr, _, _) in DVBPR_USERS.items()}
    val = {u: [record(v)] for u, (_, v, _) in DVBPR_USERS.items()}
    test = {u: [record(t)] for u, (_, _, t) in DVBPR_USERS.items()}
    items: dict[int, dict[bytes, object]] = {}
    for i in range(N_SOURCE_ITEMS):
        if i == 5:
            items[i] = {b"imgs": b"this is not a jpeg", b"asin": b"B5"}
        elif i == 7:
            items[i] = {b"imgs": truncated_jpeg()}
        elif i == 9:
            items[i] = {b"asin": b"B9"}
        else:
            items[i] = {b"imgs": jpeg(color(i)), b"asin": f"B{i}".encode()}
    parts: list[object] = [train, val, test, items, len(DVBPR_USERS), N_SOURCE_ITEMS]
    if as_lists:
        parts[:4] = [[c[k] for k in sorted(c)] for c in (train, val, test, items)]
    arr = np.empty(6, dtype=object)
    for k, part in enumerate(parts):
        arr[k] = part
    np.save(path, arr, allow_pickle=True)
    return path


@pytest.fixture
def dvbpr_file(tmp_path: Path) -> Path:
    return write_dvbpr(tmp_path / "AmazonMenWithImgPartitioned.npy")


def dvbpr_config(path: Path, **kw: object) -> AmazonMenConfig:
    settings: dict = {"path": str(path), "n_cold": 2, "image_size": SIZE, "seed": DVBPR_SEED}
    settings.update(kw)
    return AmazonMenConfig(**settings)


@pytest.mark.parametrize("as_lists", [False, True])
def test_dvbpr_catalog(tmp_path: Path, as_lists: bool) -> None:
    path = write_dvbpr(tmp_path / "release.npy", as_lists=as_lists)
    out = tmp_path / "out"
    out.mkdir()
    cat = load_dvbpr(dvbpr_config(path), "amazon_men", out, workers=2)

    # Usable items 0 1 2 3 4 6 8 10 11 become 0..8; cold {8, 10} -> {6, 7}.
    assert cat.n_items == 9
    assert cat.cold_items.tolist() == [6, 7]
    # Users 0, 1, 5 are kept, as 0, 1, 2.
    assert cat.n_users == 3
    assert per_user(cat) == [{0, 1, 2}, {1, 5}, {0}]
    assert cat.val_items.tolist() == [3, 2, 1]
    assert cat.test_items.tolist() == [4, 0, 3]
    assert cat.train_items.dtype == cat.train_users.dtype == np.int64
    assert_cold_is_cold(cat)
    assert cat.categories.tolist() == [-1] * 9
    assert cat.category_names == ()

    info = cat.info
    assert info["images_corrupt"] == 2
    assert info["images_missing"] == 1
    assert info["items_excluded"] == 3
    assert info["users_dropped_heldout_removed"] == 2  # users 3 (no image) and 4 (cold)
    assert info["users_dropped_no_train"] == 1  # user 2
    assert info["cold_rule"] == COLD_RULE
    assert info["cold_seed"] == DVBPR_SEED

    # Images: a read-only memmap of out/images.npy, close to the source colours.
    assert isinstance(cat.images, np.memmap)
    assert Path(cat.images.filename) == out / "images.npy"
    assert not cat.images.flags.writeable
    assert_colours(np.asarray(cat.images), [color(i) for i in (0, 1, 2, 3, 4, 6, 8, 10, 11)])
    ids = np.load(out / "source_ids.npz")
    assert ids["users"].tolist() == [0, 1, 5]
    assert ids["items"].tolist() == [0, 1, 2, 3, 4, 6, 8, 10, 11]


def test_dvbpr_cold_rule_matches_its_description(dvbpr_file: Path, tmp_path: Path) -> None:
    """The recorded rule, redone by hand: a seeded uniform draw among usable, interacted items."""
    eligible = np.array([0, 1, 2, 3, 4, 6, 8, 10])
    for seed in (0, 1, DVBPR_SEED):
        out = tmp_path / f"s{seed}"
        out.mkdir()
        cat = load_dvbpr(dvbpr_config(dvbpr_file, seed=seed), "amazon_men", out, workers=1)
        expected = np.sort(np.random.default_rng(seed).choice(eligible, size=2, replace=False))
        source_items = np.load(out / "source_ids.npz")["items"]
        assert source_items[cat.cold_items].tolist() == expected.tolist()
        assert_cold_is_cold(cat)


def test_dvbpr_is_deterministic(dvbpr_file: Path, tmp_path: Path) -> None:
    cats = []
    for n, workers in enumerate((1, 3)):
        out = tmp_path / f"run{n}"
        out.mkdir()
        cats.append(load_dvbpr(dvbpr_config(dvbpr_file), "amazon_men", out, workers=workers))
    a, b = cats
    for field in ("train_users", "train_items", "val_items", "test_items", "cold_items"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert a.info == b.info


def test_dvbpr_too_many_cold_items(dvbpr_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_cold=8 is too many; only 8 items"):
        load_dvbpr(dvbpr_config(dvbpr_file, n_cold=8), "amazon_men", tmp_path, workers=1)


# --- the folder format ----------------------------------------------------------------------------
FOLDER_COLOURS = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "F": 5, "Z": 6}
#: In file order (not time order). M has no image file, X's JPEG is truncated. With k = 2: u7 and
#: F fall to the first k-core; once X is out, u6 (Z only), then Z, then u5 (A only) fall too.
#: The cold rule with seed 0 draws E; u4 is then left with 2 interactions and is dropped.
FOLDER_LINES = [
    ("u1", "D", "40"),
    ("u1", "A", "10"),
    ("u1", "C", "30"),
    ("u1", "B", "20"),
    ("u1", "F", "45"),
    ("u1", "A", "50"),  # a repeat: the earliest (10) counts
    ("u2", "E", "5"),
    ("u2", "A", "15"),
    ("u2", "C", "25"),  # same time as B, earlier line: C before B
    ("u2", "B", "25"),
    ("u3", "B", "1"),
    ("u3", "C", "2"),
    ("u3", "D", "3"),
    ("u3", "E", "4"),
    ("u3", "M", "5"),
    ("u4", "D", "7"),
    ("u4", "E", "8"),
    ("u4", "A", "9"),
    ("u5", "X", "1"),
    ("u5", "Z", "2"),
    ("u5", "A", "3"),
    ("u6", "X", "5"),
    ("u6", "Z", "6"),
    ("u7", "B", "50"),
]


def write_folder(root: Path, header: str | None = "user_id\titem_id\ttimestamp") -> Path:
    (root / "images").mkdir(parents=True)
    lines = [header] if header else []
    lines += ["\t".join(line) for line in FOLDER_LINES]
    (root / "interactions.tsv").write_text("\n".join(lines) + "\n")
    for item, c in FOLDER_COLOURS.items():
        (root / "images" / f"{item}.jpg").write_bytes(jpeg(color(c)))
    (root / "images" / "X.jpg").write_bytes(truncated_jpeg())
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "amazon_women")


def folder_config(root: Path, **kw: object) -> FolderConfig:
    settings: dict = {"path": str(root), "k_core": 2, "n_cold": 1, "image_size": SIZE, "seed": 0}
    settings.update(kw)
    return FolderConfig(**settings)


def test_folder_catalog(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cat = load_folder(folder_config(folder), "folder", out, workers=2)

    # Items A B C D E -> 0..4 (E cold); users u1 u2 u3 -> 0 1 2.
    assert cat.n_items == 5
    assert cat.cold_items.tolist() == [4]
    assert cat.n_users == 3
    # Time-aware leave-one-out: last -> test, second-to-last -> validation.
    assert cat.test_items.tolist() == [3, 1, 3]  # u1: D@40; u2: B (tie at 25, later line); u3: D
    assert cat.val_items.tolist() == [2, 2, 2]  # u1: C@30; u2: C; u3: C
    assert per_user(cat) == [{0, 1}, {0}, {1}]
    assert_cold_is_cold(cat)

    info = cat.info
    assert info["images_missing"] == 1  # M
    assert info["images_corrupt"] == 1  # X
    assert info["duplicates_dropped"] == 1
    assert info["kcore_users"] == 4 and info["kcore_items"] == 5
    assert info["users_dropped_too_few"] == 1  # u4
    assert info["cold_seed"] == 0 and info["cold_rule"] == COLD_RULE

    # Z's image was decoded, then compacted out when the second k-core removed it.
    assert_colours(np.asarray(cat.images), [color(FOLDER_COLOURS[i]) for i in "ABCDE"])
    assert np.load(out / "images.npy", mmap_mode="r").shape == (5, 3, SIZE, SIZE)
    ids = np.load(out / "source_ids.npz")
    assert ids["users"].tolist() == ["u1", "u2", "u3"]
    assert ids["items"].tolist() == ["A", "B", "C", "D", "E"]


def test_folder_is_deterministic_by_seed(folder: Path, tmp_path: Path) -> None:
    colds = {}
    for seed in (0, 0, 1, 2):
        out = tmp_path / f"s{seed}-{len(colds)}"
        out.mkdir()
        cat = load_folder(folder_config(folder, seed=seed, n_cold=2), "folder", out, workers=1)
        expected = np.sort(np.random.default_rng(seed).choice(5, size=2, replace=False))
        assert cat.cold_items.tolist() == expected.tolist()
        assert_cold_is_cold(cat)
        colds.setdefault(seed, []).append(cat)
    a, b = colds[0]
    for field in ("train_users", "train_items", "val_items", "test_items", "cold_items"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


def test_folder_without_header_or_timestamps(tmp_path: Path) -> None:
    """No timestamps: file order decides the split."""
    root = tmp_path / "plain"
    (root / "images").mkdir(parents=True)
    rows = [("7", "x1"), ("7", "x2"), ("7", "x3"), ("8", "x3"), ("8", "x1"), ("8", "x2")]
    rows += [("9", "x2"), ("9", "x3"), ("9", "x4"), ("9", "x1")]
    (root / "interactions.tsv").write_text("".join(f"{u}\t{i}\n" for u, i in rows))
    for n, item in enumerate(["x1", "x2", "x3", "x4"]):
        (root / "images" / f"{item}.jpg").write_bytes(jpeg(color(n)))
    frame = read_interactions(root / "interactions.tsv")
    assert len(frame) == len(rows)  # no line taken for a header
    out = tmp_path / "out"
    out.mkdir()
    cat = load_folder(folder_config(root, k_core=1, seed=0), "folder", out, workers=1)
    cold = int(cat.cold_items[0])
    kept = [[i for u2, i in rows if u2 == u and int(i[1]) - 1 != cold] for u in ("7", "8", "9")]
    kept = [k for k in kept if len(k) >= 3]
    assert cat.n_users == len(kept)
    assert cat.test_items.tolist() == [int(k[-1][1]) - 1 for k in kept]
    assert cat.val_items.tolist() == [int(k[-2][1]) - 1 for k in kept]


def test_read_interactions_dates_and_header(tmp_path: Path) -> None:
    path = tmp_path / "i.tsv"
    path.write_text("user\titem\ttime\nbob\tp1\t2014-03-02\nbob\tp2\t2013-01-01T10:00:00\n")
    frame = read_interactions(path)
    assert frame["user"].tolist() == ["bob", "bob"]
    assert frame["time"].iloc[0] > frame["time"].iloc[1]
    path.write_text("user_17\titem_3\t5\nuser_17\titem_4\t6\n")  # ids that look like names
    assert len(read_interactions(path)) == 2


# --- storage: memmap output, atomic preparation ------------------------------------------------
def test_save_keeps_streamed_images_and_load_is_readonly(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cat = load_folder(folder_config(folder), "folder", out, workers=1)
    before = (out / "images.npy").stat().st_mtime_ns
    cat.save(out)
    assert (out / "images.npy").stat().st_mtime_ns == before  # not rewritten
    loaded = Catalog.load(out)
    assert isinstance(loaded.images, np.memmap)
    assert not loaded.images.flags.writeable
    assert loaded.images.dtype == np.uint8 and loaded.images.shape == (5, 3, SIZE, SIZE)
    assert loaded.info == json.loads(json.dumps(cat.info))
    np.testing.assert_array_equal(loaded.val_items, cat.val_items)


def test_prepare_dataset_writes_catalog_and_cold_shard(folder: Path, tmp_path: Path) -> None:
    from aipray.pipeline.stages import prepare_dataset

    out = tmp_path / "store" / "datasets" / "folder-abc"
    component = Component("dataset", "folder", folder_config(folder))
    assert prepare_dataset(component, out) == out
    loaded = Catalog.load(out)
    assert loaded.n_items == 5 and loaded.n_users == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_corrupt"] == 1 and summary["images_missing"] == 1
    import pyarrow.parquet as pq

    table = pq.read_table(out / "cold")
    assert table["item_id"].to_pylist() == [4]
    image = np.frombuffer(table["image"][0].as_py(), np.uint8).reshape(3, SIZE, SIZE)
    np.testing.assert_array_equal(image, loaded.images[4])


def test_failed_preparation_leaves_nothing_complete(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aipray.pipeline.stages import prepare_dataset

    real = images_mod.decode_image
    calls = {"n": 0}

    def failing(source, size):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(source, size)

    monkeypatch.setattr(images_mod, "decode_image", failing)
    parent = tmp_path / "store" / "datasets"
    out = parent / "folder-abc"
    component = Component("dataset", "folder", folder_config(folder))
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_dataset(component, out)
    assert not out.exists()
    assert list(parent.iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(images_mod, "decode_image", real)
    prepare_dataset(component, out)  # a re-run starts clean and completes
    assert Catalog.load(out).n_items == 5


def test_shrink_npy_keeps_leading_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    arr = np.arange(7 * 3 * 2, dtype=np.uint8).reshape(7, 3, 2)
    np.save(path, arr)
    shrink_npy(path, 4)
    np.testing.assert_array_equal(np.load(path), arr[:4])
    shrink_npy(path, 0)
    assert np.load(path).shape == (0, 3, 2)


def test_registered_datasets() -> None:
    assert {"amazon_men", "tradesy", "folder", "synthetic"} <= set(DATASETS.names())
    assert DATASETS.get("tradesy").Config().path.endswith("data/TradesyImgPartitioned.npy")
    assert DATASETS.get("amazon_men").Config().path.endswith("data/AmazonMenWithImgPartitioned.npy")


# --- config errors, before any work -----------------------------------------------------------
BASE = {
    "name": "t",
    "datasets": {"synthetic": {}},
    "models": {"dvbpr": {}},
    "attacks": {"insa": {"eps": 8}},
}


def sweep_with(datasets: dict) -> dict:
    raw = copy.deepcopy(BASE)
    raw["datasets"] = datasets
    return raw


def config_error(datasets: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_sweep(sweep_with(datasets), "s.yaml")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_release_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default data/... does not exist here
    message = config_error({"amazon_men": {}})
    assert message.startswith("s.yaml: datasets.amazon_men.path: ")
    assert "AmazonMenWithImgPartitioned.npy' is not allowed; expected an existing DVBPR" in message
    assert "missing" in message and "scripts/download_data.sh" in message
    message = config_error({"tradesy": {"path": "elsewhere/t.npy"}})
    assert "datasets.tradesy.path: " in message and "elsewhere/t.npy' is not allowed" in message


def test_release_file_that_is_not_npy(tmp_path: Path) -> None:
    bogus = tmp_path / "t.npy"
    bogus.write_text("hello")
    message = config_error({"tradesy": {"path": str(bogus)}})
    assert f"datasets.tradesy.path: {str(bogus)!r} is not allowed" in message
    assert "not a .npy file" in message


def test_folder_config_errors(folder: Path, tmp_path: Path) -> None:
    message = config_error({"folder": {}})
    assert "datasets.folder.path: '' is not allowed; expected a folder holding" in message
    assert "(required)" in message
    message = config_error({"folder": {"path": str(tmp_path / "nope")}})
    assert "datasets.folder.path: " in message and "no such folder" in message
    message = config_error({"folder": {"path": str(folder), "interactions": "ratings.tsv"}})
    assert "datasets.folder.interactions: 'ratings.tsv' is not allowed" in message
    message = config_error({"folder": {"path": str(folder), "k_core": 0}})
    assert "datasets.folder.k_core: 0 is not allowed; expected an integer >= 1" in message


def test_valid_real_configs_parse(folder: Path, dvbpr_file: Path) -> None:
    sweep = parse_sweep(
        sweep_with(
            {
                "folder": {"path": str(folder), "k_core": 2},
                "amazon_men": {"path": str(dvbpr_file), "n_cold": 2},
            }
        )
    )
    configs = {d.name: d.config for d in sweep.datasets}
    assert configs["folder"].path == str(folder.resolve())
    assert configs["amazon_men"].n_cold == 2
    assert isinstance(configs["amazon_men"], AmazonMenConfig)
    assert not isinstance(configs["amazon_men"], TradesyConfig)


# --- Perceptual-Rec folders: k-core until stable, time-aware split, expected counts ------------
#: With k = 3 the core is u1..u3 × {A, B, C}. Around it removals cascade over four rounds:
#: E (2 interactions) → u5 and u6 (2 left each) → D (1 left) → u4 (2 left). One pass over users
#: and then items would stop after E and keep u4, u5, u6 and D.
KCORE_LINES = [
    ("u1", "A", "1"),
    ("u1", "B", "2"),
    ("u1", "C", "3"),
    ("u2", "C", "1"),
    ("u2", "A", "2"),
    ("u2", "B", "3"),
    ("u3", "B", "5"),  # u3's lines are not in time order
    ("u3", "C", "4"),
    ("u3", "A", "6"),
    ("u4", "A", "1"),
    ("u4", "B", "2"),
    ("u4", "D", "3"),
    ("u5", "D", "1"),
    ("u5", "E", "2"),
    ("u5", "C", "3"),
    ("u6", "D", "1"),
    ("u6", "E", "2"),
    ("u6", "C", "3"),
]
KCORE = {(u, i) for u in ("u1", "u2", "u3") for i in "ABC"}


def write_kcore_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    lines = ["user\titem\ttimestamp"] + ["\t".join(line) for line in KCORE_LINES]
    (root / "interactions.tsv").write_text("\n".join(lines) + "\n")
    for n, item in enumerate("ABCDE"):
        (root / "images" / f"{item}.jpg").write_bytes(jpeg(color(n)))
    return root


def test_k_core_iterates_until_stable(tmp_path: Path) -> None:
    from aipray.data.folder import k_core

    frame = read_interactions(write_kcore_folder(tmp_path / "f") / "interactions.tsv")
    core = k_core(frame, 3)
    assert set(zip(core["user"], core["item"], strict=True)) == KCORE
    assert k_core(core, 3).equals(core)  # stable
    assert core.groupby("user").size().min() >= 3 and core.groupby("item").size().min() >= 3
    # one round of "users, then items" is not enough here
    once = frame[frame.groupby("user")["item"].transform("size") >= 3]
    once = once[once.groupby("item")["user"].transform("size") >= 3]
    assert {"u4", "u5", "u6"} <= set(once["user"])
    # with k = 2 nothing falls (E has exactly 2 interactions)
    assert len(k_core(frame, 2)) == len(frame)


def test_folder_kcore_and_time_aware_split(tmp_path: Path) -> None:
    root = write_kcore_folder(tmp_path / "f")
    out = tmp_path / "out"
    out.mkdir()
    cat = load_folder(folder_config(root, k_core=3, n_cold=0), "folder", out, workers=1)
    info = cat.info
    assert (info["kcore_users"], info["kcore_items"], info["kcore_interactions"]) == (3, 3, 9)
    assert cat.cold_items.size == 0 and cat.warm_mask().all()  # n_cold: 0, as in Perceptual-Rec
    assert info["count_check"] == "not checked"
    ids = np.load(out / "source_ids.npz")
    users, items = ids["users"].tolist(), ids["items"].tolist()
    assert users == ["u1", "u2", "u3"] and items == ["A", "B", "C"]
    # each user's last interaction (by time) is the test item, the one before the validation item
    for u, user in enumerate(users):
        mine = sorted((int(t), i) for v, i, t in KCORE_LINES if v == user and (v, i) in KCORE)
        assert items[cat.test_items[u]] == mine[-1][1]
        assert items[cat.val_items[u]] == mine[-2][1]
        assert {items[i] for i in cat.train_items[cat.train_users == u]} == {
            i for _, i in mine[:-2]
        }
    assert cat.test_items.tolist() == [2, 1, 0]  # u1: C@3, u2: B@3, u3: A@6
    assert cat.val_items.tolist() == [1, 0, 1]  # u1: B@2, u2: A@2, u3: B@5 (line before C@4)


def test_expected_counts_table_and_check(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from aipray.data import folder as folder_mod

    assert folder_mod.EXPECTED_COUNTS == {
        "amazon_men_5core": {"users": 24_379, "items": 7_371, "interactions": 89_020},
        "amazon_women_10core": {"users": 16_668, "items": 2_981, "interactions": 54_473},
        "mmrec_baby": {"users": 19_445, "items": 7_050, "interactions": 160_792},
        "mmrec_sports": {"users": 35_598, "items": 18_357, "interactions": 296_337},
        "mmrec_clothing": {"users": 39_387, "items": 23_033, "interactions": 278_677},
    }
    men = {"users": 24_379, "items": 7_371, "interactions": 89_020}
    assert folder_mod.check_counts(men, "amazon_men_5core", on_mismatch="fail") == []
    with caplog.at_level("WARNING", logger="aipray.data.folder"):
        diffs = folder_mod.check_counts({**men, "items": 7_000}, "amazon_men_5core")
    assert diffs == ["items: 7,000 (expected 7,371)"]
    assert "differ from amazon_men_5core: items: 7,000 (expected 7,371)" in caplog.text
    with pytest.raises(ValueError, match="on_count_mismatch: warn"):
        folder_mod.check_counts({**men, "users": 1}, "amazon_men_5core", on_mismatch="fail")
    with pytest.raises(ValueError, match="unknown; allowed: amazon_men_5core"):
        folder_mod.check_counts(men, "amazon_men")
    monkeypatch.setitem(folder_mod.EXPECTED_COUNTS, "tiny", {"users": 3, "items": 3})
    assert folder_mod.check_counts({"users": 3, "items": 3}, "tiny", on_mismatch="fail") == []


def test_folder_counts_checked_when_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from aipray.data import folder as folder_mod

    root = write_kcore_folder(tmp_path / "f")
    settings = {"k_core": 3, "n_cold": 0, "expected_counts": "amazon_women_10core"}
    out = tmp_path / "warn"
    out.mkdir()
    with caplog.at_level("WARNING", logger="aipray.data.folder"):
        cat = load_folder(folder_config(root, **settings), "women", out, workers=1)
    assert "women: the prepared counts differ from amazon_women_10core" in caplog.text
    assert "users: 3 (expected 16,668)" in cat.info["count_check"]
    assert folder_mod.check_counts(folder_mod.kcore_counts(cat.info), "amazon_women_10core")
    out = tmp_path / "fail"
    out.mkdir()
    config = folder_config(root, **settings, on_count_mismatch="fail")
    with pytest.raises(ValueError, match=r"interactions: 9 \(expected 54,473\)"):
        load_folder(config, "women", out, workers=1)
    # the preset, with the table entry matching this folder: checked and fine
    monkeypatch.setitem(
        folder_mod.EXPECTED_COUNTS, "amazon_men_5core", {"users": 3, "items": 3, "interactions": 9}
    )
    out = tmp_path / "ok"
    out.mkdir()
    from aipray.data.presets import AmazonMen5CoreConfig

    preset = AmazonMen5CoreConfig(
        path=str(root), k_core=3, image_size=SIZE, on_count_mismatch="fail"
    )
    cat = load_folder(preset, "amazon_men_5core", out, workers=1)
    assert cat.info["count_check"] == "ok" and cat.info["expected_counts"] == "amazon_men_5core"
    with pytest.raises(ValueError, match="not prepared from a folder"):
        folder_mod.kcore_counts({"source": "dvbpr"})


def test_perceptual_rec_presets(folder: Path) -> None:
    men = DATASETS.get("amazon_men_5core").Config()
    women = DATASETS.get("amazon_women_10core").Config()
    assert (men.k_core, men.n_cold, men.expected_counts) == (5, 0, "amazon_men_5core")
    assert (women.k_core, women.n_cold, women.expected_counts) == (10, 0, "amazon_women_10core")
    assert men.path.endswith("data/amazon_men") and women.path.endswith("data/amazon_women")
    # AIP's protocol attacks cold items: the presets' n_cold 0 fails there before any work
    with pytest.raises(ConfigError, match=r"amazon_men_5core\.n_cold: 0 is not allowed"):
        parse_sweep(sweep_with({"amazon_men_5core": {"path": str(folder)}}))
    sweep = parse_sweep(
        sweep_with(
            {
                "amazon_men_5core": {"path": str(folder), "n_cold": 5},
                "amazon_women_10core": {
                    "path": str(folder),
                    "n_cold": 5,
                    "on_count_mismatch": "fail",
                },
            }
        )
    )
    configs = {d.name: d.config for d in sweep.datasets}
    assert configs["amazon_men_5core"].k_core == 5
    assert configs["amazon_women_10core"].on_count_mismatch == "fail"
    message = config_error({"folder": {"path": str(folder), "expected_counts": "amazon_men"}})
    assert "datasets.folder.expected_counts: 'amazon_men' is not allowed" in message
    assert "amazon_men_5core" in message


# --- MMRec's Amazon datasets ---------------------------------------------------------------------
def write_mmrec(root: Path) -> tuple[Path, Path]:
    """MMRec's files for one dataset (``tiny.inter``, ``i_id_mapping.csv``) and a folder of
    pictures named by ASIN, one of them missing."""
    root.mkdir(parents=True)
    inter = ["userID\titemID\trating\ttimestamp\tx_label"]
    # user u rated items (u + j) % 5 at times 10j + u; x_label is MMRec's split, not read
    inter += [f"{u}\t{(u + j) % 5}\t5.0\t{10 * j + u}\t0" for u in range(4) for j in range(4)]
    (root / "tiny.inter").write_text("\n".join(inter) + "\n")
    asins = ["B0", "B1", "B2", "B3", "B4"]
    mapping = ["asin\titemID"] + [f"{a}\t{i}" for i, a in enumerate(asins)]
    (root / "i_id_mapping.csv").write_text("\n".join(mapping) + "\n")
    pictures = root.parent / "pictures"
    pictures.mkdir()
    for n, asin in enumerate(asins[:4]):  # B4 has no picture
        (pictures / f"{asin}.jpg").write_bytes(jpeg(color(n)))
    return root, pictures


def test_an_mmrec_dataset_is_laid_out_and_read_by_its_column_names(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from mmrec_folder import lay_out

    mmrec, pictures = write_mmrec(tmp_path / "mmrec")
    out = tmp_path / "folder"
    counts = lay_out(mmrec, pictures, out)
    assert counts == {"items": 5, "images": 4, "missing": 1}
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i}.jpg" for i in range(4)]
    assert (out / "missing_images.txt").read_text().split() == ["B4"]
    frame = read_interactions(out / "tiny.inter", "userID,itemID,timestamp")
    assert len(frame) == 16 and frame["time"].tolist()[:2] == [0.0, 10.0]  # not the rating
    config = folder_config(
        out, interactions="tiny.inter", columns="userID,itemID,timestamp", k_core=1, n_cold=0
    )
    assert config.file_checks() == []
    work = tmp_path / "work"
    work.mkdir()
    cat = load_folder(config, "tiny", work, workers=1)
    assert cat.n_items == 4  # item 4 has no picture
    # time-aware leave-one-out: each user's last interaction (j = 3) unless its item was dropped
    last = [(u + 3) % 5 for u in range(4)]
    expected = [item if item != 4 else (u + 2) % 5 for u, item in enumerate(last)]
    assert cat.test_items.tolist() == expected
    # a name the file lacks is one line naming the key, the value and the file's names
    bad = folder_config(out, interactions="tiny.inter", columns="user,itemID")
    ((key, value, allowed),) = bad.file_checks()
    assert (key, value) == ("columns", "user,itemID") and "userID,itemID,rating" in allowed
    with pytest.raises(ValueError, match="columns 'user,itemID'"):
        read_interactions(out / "tiny.inter", "user,itemID")


def test_the_mmrec_presets_name_mmrecs_files_and_counts() -> None:
    for name in ("baby", "sports", "clothing"):
        config = DATASETS.get(f"mmrec_{name}").Config()
        assert config.interactions == f"{name}.inter"
        assert config.columns == "userID,itemID,timestamp" and config.k_core == 5
        assert config.expected_counts == f"mmrec_{name}"


def test_folder_titles_reach_the_catalog(folder: Path, tmp_path: Path) -> None:
    (folder / "titles.tsv").write_text("A\tred disc\nC\tnavy box\nQ\tnot an item\n")
    out = tmp_path / "out"
    out.mkdir()
    cat = load_folder(folder_config(folder, titles="titles.tsv"), "folder", out, workers=1)
    assert cat.titles == ("red disc", "", "navy box", "", "")
    assert folder_config(folder, titles="missing.tsv").file_checks()[0][0] == "titles"
    cat.save(out)
    assert Catalog.load(out).titles == cat.titles
