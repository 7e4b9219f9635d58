"""The peer credential derived from the fabric keyring (spores fetched from peers)."""

from __future__ import annotations

from pathlib import Path

from reconciler.fabric.keyring import Keyring, peer_token

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def test_the_token_is_hmac_sha256_of_the_context_in_base64url() -> None:
    # A fixed vector: any implementation of the scheme must produce exactly this.
    assert peer_token(KEY_A) == "o8DlyzUM39i6I47Ak5H9EtrMILmQd-bo2ROkdX7zLmM"
    assert len(peer_token(KEY_B)) == 43
    assert peer_token(KEY_B) != peer_token(KEY_A)


def test_sends_the_primary_accepts_any_installed_key(tmp_path: Path) -> None:
    old = Keyring([KEY_A])
    assert old.peer_token() == peer_token(KEY_A)
    # Rotation, step 1: the new key is installed everywhere, the old one still primary.
    both = Keyring([KEY_A, KEY_B])
    assert both.peer_token() == peer_token(KEY_A)
    assert both.accepts_peer_token(peer_token(KEY_A))
    assert both.accepts_peer_token(peer_token(KEY_B))
    # Step 2: the new key becomes primary; members still on step 1 accept what it sends.
    both.use(KEY_B)
    assert both.peer_token() == peer_token(KEY_B)
    assert both.peer_tokens() == (peer_token(KEY_B), peer_token(KEY_A))
    # Step 3: the old key is removed; its token is refused from then on.
    both.remove(KEY_A)
    assert not both.accepts_peer_token(peer_token(KEY_A))
    assert not old.accepts_peer_token(peer_token(KEY_B))
    # The token survives a round trip through the key file (what every daemon loads).
    both.save(tmp_path / "gossip.key")
    assert Keyring.load(tmp_path / "gossip.key").peer_token() == peer_token(KEY_B)


def test_refuses_anything_else() -> None:
    ring = Keyring([KEY_A])
    for bad in ("", "x", peer_token(KEY_A)[:-1], peer_token(KEY_A) + "=", "é" * 43):
        assert not ring.accepts_peer_token(bad)
