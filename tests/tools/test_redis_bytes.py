"""``make bench``'s Redis section: how what is left after expiry is named and counted."""

from __future__ import annotations

from tools.redis_bytes import family, grown


def test_a_key_family_names_its_ids_as_stars_and_keeps_its_words() -> None:
    assert family(b"kiln:prediction:01JF3ZQ8Y2V6K9M4N7P0R5S1T2") == "kiln:prediction:*"
    assert family(b"kiln:prediction:01JF3ZQ8Y2V6K9M4N7P0R5S1T2:logs") == "kiln:prediction:*:logs"
    assert family(b"kiln:tenant:tenant-a:predictions") == "kiln:tenant:tenant-a:predictions"
    assert family(b"kiln:batch:b_4f9a1c2e3d5b6a7c:items") == "kiln:batch:*:items"


def test_only_families_with_more_keys_or_bytes_than_before_are_reported() -> None:
    before = {"kiln:running": (1, 100), "kiln:prediction:*": (20, 20_000), "kiln:gone": (3, 300)}
    after = {"kiln:running": (1, 100), "kiln:prediction:*": (22, 20_500), "kiln:tenant:a": (1, 64)}
    assert grown(before, after) == {"kiln:prediction:*": (2, 500), "kiln:tenant:a": (1, 64)}
