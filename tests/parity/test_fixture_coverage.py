"""Every fixture folder must be understood by some parity test: an unknown format fails loudly."""

from tests.reference import all_fixtures, classify, open_fixture, reference_dir


def test_every_fixture_folder_has_a_known_kind():
    open_fixture(reference_dir())
    unknown = [p.name for p in all_fixtures() if classify(p) == "unknown"]
    assert not unknown, f"fixture folders of an unknown format: {unknown}"
