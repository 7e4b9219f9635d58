"""Spores: signed, reproducible bundles of an app's files and DNA (DESIGN §4).

Modules: :mod:`.manifest` (the signed DNA), :mod:`.keys` (Ed25519 key files),
:mod:`.signature` (the signature record), :mod:`.trust` (keys → app-name patterns),
:mod:`.archive` (the zip container and its hostile-input reader), :mod:`.build`,
:mod:`.verify`, :mod:`.extract`. See docs/spore.md.
"""
