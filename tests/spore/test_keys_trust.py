"""Key files (the keygen contract) and trust policies."""

from __future__ import annotations

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from reconciler.errors import ConfigError, KeyFileError
from reconciler.spore.keys import (
    fingerprint,
    generate_keypair,
    load_private_key,
    load_public_key,
    raw_public_bytes,
)
from reconciler.spore.trust import TrustPolicy


def test_keygen_writes_pkcs8_0600_and_public_pem(tmp_path):
    key, pub = generate_keypair(tmp_path / "k", "release")
    assert key.name == "release.key"
    assert pub.name == "release.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private = load_private_key(key)
    assert raw_public_bytes(private.public_key()) == raw_public_bytes(load_public_key(pub))


def test_keygen_refuses_to_overwrite_without_force(tmp_path):
    key, pub = generate_keypair(tmp_path, "a")
    before = key.read_bytes()
    with pytest.raises(KeyFileError, match="--force"):
        generate_keypair(tmp_path, "a")
    assert key.read_bytes() == before
    pub.unlink()
    with pytest.raises(KeyFileError):  # one of the two is enough to refuse
        generate_keypair(tmp_path, "a")
    generate_keypair(tmp_path, "a", force=True)
    assert key.read_bytes() != before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 80])
def test_keygen_refuses_bad_names(tmp_path, name):
    with pytest.raises(KeyFileError):
        generate_keypair(tmp_path, name)


def test_loading_garbage_and_wrong_key_types(tmp_path):
    junk = tmp_path / "junk.key"
    junk.write_text("hello")
    with pytest.raises(KeyFileError):
        load_private_key(junk)
    with pytest.raises(KeyFileError):
        load_public_key(junk)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "absent.key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = tmp_path / "rsa.key"
    pem.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        load_private_key(pem)
    _, pub = generate_keypair(tmp_path, "ok")
    with pytest.raises(KeyFileError):
        load_private_key(pub)


def test_pem_file_trusts_the_key_for_every_name(keys, other_keys):
    policy = TrustPolicy.load([keys.pub])
    assert policy.allows(keys.raw, "billing")
    assert policy.allows(keys.raw, "anything-else")
    assert not policy.allows(other_keys.raw, "billing")
    assert policy.label(keys.raw) == "dev"
    assert policy.label(other_keys.raw) == fingerprint(other_keys.raw)


def test_policy_patterns_relative_paths_and_inline_keys(keys, other_keys, tmp_path):
    inline = other_keys.pub.read_text().replace("\n", "\n      ")
    policy_file = tmp_path / "keys" / "trust.yaml"
    policy_file.write_text(
        "apiVersion: myco/v1\n"
        "kind: TrustPolicy\n"
        "keys:\n"
        "  - name: payments\n"
        "    key: dev.pub\n"  # relative to the policy file
        "    apps: [billing, 'pay-*']\n"
        "  - name: web\n"
        "    public_key: |\n"
        f"      {inline}\n"
        "    apps: ['front?nd']\n"
    )
    policy = TrustPolicy.load([policy_file])
    assert policy.allows(keys.raw, "billing")
    assert policy.allows(keys.raw, "pay-out")
    assert not policy.allows(keys.raw, "frontend")
    assert not policy.allows(keys.raw, "Billing")
    assert policy.allows(other_keys.raw, "frontend")
    assert not policy.allows(other_keys.raw, "billing")
    assert policy.label(keys.raw) == "payments"
    # Sources merge: the PEM adds "*" for the second key.
    merged = TrustPolicy.load([policy_file, other_keys.pub])
    assert merged.allows(other_keys.raw, "billing")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("just: [a, list", "neither a PEM"),
        ("- a\n- b\n", "expected a mapping"),
        ("apiVersion: myco/v1\nkind: Other\nkeys: []\n", "kind: TrustPolicy"),
        ("apiVersion: myco/v1\nkind: TrustPolicy\nkeys: []\n", "non-empty list"),
        ("apiVersion: myco/v1\nkind: TrustPolicy\nkeys: []\nextra: 1\n", "unknown field"),
        (
            "apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n  - key: dev.pub\n    apps: []\n",
            "'apps'",
        ),
        (
            "apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n  - apps: ['*']\n",
            "exactly one of",
        ),
        (
            "apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n  - key: no.pub\n    apps: ['*']\n",
            "cannot read",
        ),
        (
            "apiVersion: myco/v1\nkind: TrustPolicy\nkeys:\n"
            "  - key: dev.pub\n    apps: ['*']\n    allow: all\n",
            "unknown field",
        ),
    ],
)
def test_bad_policies_are_refused(keys, body, fragment):
    bad = keys.pub.parent / "bad.yaml"
    bad.write_text(body)
    with pytest.raises(ConfigError, match=fragment):
        TrustPolicy.load([bad])


def test_missing_trust_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        TrustPolicy.load([tmp_path / "nope.pub"])
