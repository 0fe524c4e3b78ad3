"""The Kinetics-400 label map and the two class orders."""
import hashlib

import pytest

from frameworks.spec import labels
from frameworks.spec.labels import K400_CLASSES, LabelMap, canonical_label, first_appearance_order


def test_400_unique_names_in_mmaction2_order():
    assert len(K400_CLASSES) == 400 and len(set(K400_CLASSES)) == 400
    # alphabetical, case-insensitively ("passing American football" keeps its capital)
    assert list(K400_CLASSES) == sorted(K400_CLASSES, key=str.lower)
    # pinned: the exact bytes of mmaction2's label_map_k400.txt (400 names, one per line)
    blob = ("\n".join(K400_CLASSES) + "\n").encode()
    assert hashlib.md5(blob).hexdigest() == "41a47d45938e2f6e4f3eac44b26376e5"


def test_known_indices():
    # spot checks: line number - 1 in mmaction2's label_map_k400.txt
    expected = {
        "abseiling": 0,
        "air drumming": 1,
        "hurling (sport)": 161,
        "passing American football (in game)": 208,
        "playing guitar": 232,
        "tai chi": 346,
        "zumba": 399,
    }
    for name, idx in expected.items():
        assert labels.k400_index(name) == idx, name
        assert K400_CLASSES[idx] == name


@pytest.mark.parametrize(
    "spelling,canonical",
    [
        ("air_drumming", "air drumming"),
        ('"air drumming"', "air drumming"),
        ("  air   drumming ", "air drumming"),
        ("hurling_-sport-", "hurling (sport)"),
        ("passing_American_football_-in_game-", "passing American football (in game)"),
        ("skiing_-not_slalom_or_crosscountry-", "skiing (not slalom or crosscountry)"),
        ("massaging_person's_head", "massaging person's head"),
    ],
)
def test_spellings_resolve(spelling, canonical):
    assert canonical_label(spelling) == canonical
    assert labels.k400_index(spelling) == K400_CLASSES.index(canonical)


def test_case_insensitive_lookup_and_unknown():
    k400 = LabelMap.k400()
    assert k400.index("PASSING american FOOTBALL (IN GAME)") == 208
    assert "juggling chainsaws" not in k400 and k400.get("juggling chainsaws") is None
    with pytest.raises(KeyError, match="juggling chainsaws"):
        k400.index("juggling_chainsaws")
    assert labels.check_names(["yoga", "juggling chainsaws"]) == ["juggling chainsaws"]


def test_first_appearance_is_the_seeds_order():
    rows = ["yoga", "abseiling", "yoga", "air_drumming", "abseiling", "zumba"]
    assert first_appearance_order(rows) == ("yoga", "abseiling", "air drumming", "zumba")
    seed = LabelMap.from_first_appearance(rows)
    assert seed.order == "train_csv" and seed.index("yoga") == 0 and seed.index("zumba") == 3
    # mapping seed ids onto alphabetical ids: perm[seed id] = k400 id
    assert labels.permutation(seed, LabelMap.k400()) == [398, 0, 1, 399]
    with pytest.raises(KeyError):
        labels.permutation(LabelMap.k400(), seed)


def test_duplicates_rejected_and_file_roundtrip(tmp_path):
    with pytest.raises(ValueError):
        LabelMap(("a", "A"))
    path = tmp_path / "map.txt"
    path.write_text("\n".join(K400_CLASSES) + "\n")
    assert LabelMap.from_file(path).names == K400_CLASSES
