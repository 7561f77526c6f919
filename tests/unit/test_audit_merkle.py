"""RFC 6962 Merkle tree: golden vectors, incremental builder, inclusion and consistency proofs.

Golden vectors are the standard Certificate Transparency test leaves and their roots, inclusion
proofs and consistency proofs as published in ``transparency-dev/merkle: proof/verify_test.go``.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from appliance.audit import merkle

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]

# Roots of the trees over LEAVES[:1] .. LEAVES[:8] (transparency-dev/merkle verify_test.go).
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in hexes]


# (leaf index, tree size, proof) from the same file (there given with 1-based leaf numbers).
INCLUSION_VECTORS = [
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (0, 1, []),
]

CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

GOLDEN_HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def reference_root(hashes: list[bytes]) -> bytes:
    """Independent, literal RFC 6962 §2.1 MTH over slices."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    left, right = reference_root(hashes[:k]), reference_root(hashes[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def random_hashes(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [merkle.leaf_hash(rng.randbytes(rng.randrange(0, 40))) for _ in range(n)]


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- hashing primitives -------------------------------------------------------------------


def test_empty_root_is_sha256_of_empty_string() -> None:
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert merkle.root([]) == merkle.EMPTY_ROOT
    assert merkle.TreeBuilder().root() == merkle.EMPTY_ROOT


def test_leaf_and_node_hash_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"") == ROOTS[0]
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # A node can never be passed off as a leaf over the concatenated children.
    assert merkle.node_hash(a, b) != merkle.leaf_hash(a + b)


@pytest.mark.parametrize("size", range(1, 9))
def test_golden_roots(size: int) -> None:
    assert merkle.root(GOLDEN_HASHES[:size]) == ROOTS[size - 1]
    builder = merkle.TreeBuilder()
    for h in GOLDEN_HASHES[:size]:
        builder.append(h)
    assert builder.root() == ROOTS[size - 1]


def test_reference_root_agrees_with_golden_roots() -> None:
    for size in range(1, 9):
        assert reference_root(GOLDEN_HASHES[:size]) == ROOTS[size - 1]


# --- TreeBuilder --------------------------------------------------------------------------


def test_tree_builder_matches_root_for_every_size() -> None:
    hashes = random_hashes(70, seed=1)
    builder = merkle.TreeBuilder()
    assert builder.size == 0
    for n in range(71):
        assert builder.size == n
        assert len(builder.compact_range) == n.bit_count()
        expected = reference_root(hashes[:n])
        assert builder.root() == expected
        assert merkle.root(hashes[:n]) == expected
        if n < 70:
            builder.append(hashes[n])


def test_tree_builder_resumes_from_compact_range() -> None:
    hashes = random_hashes(45, seed=2)
    builder = merkle.TreeBuilder()
    for h in hashes[:37]:
        builder.append(h)
    resumed = merkle.TreeBuilder.from_compact_range(builder.size, builder.compact_range)
    for h in hashes[37:]:
        resumed.append(h)
    assert resumed.root() == reference_root(hashes)
    with pytest.raises(ValueError, match="needs 3 hashes"):
        merkle.TreeBuilder.from_compact_range(37, builder.compact_range[:2])


def test_tree_builder_rejects_bad_leaf_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        merkle.TreeBuilder().append(b"short")


# --- inclusion proofs ---------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_golden_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert merkle.inclusion_proof(GOLDEN_HASHES[:size], index) == proof
    assert merkle.verify_inclusion(GOLDEN_HASHES[index], index, size, proof, ROOTS[size - 1])


def test_inclusion_proofs_verify_and_detect_tampering() -> None:
    hashes = random_hashes(20, seed=3)
    for n in range(1, 21):
        tree = hashes[:n]
        r = merkle.root(tree)
        for m in range(n):
            proof = merkle.inclusion_proof(tree, m)
            leaf = tree[m]
            assert merkle.verify_inclusion(leaf, m, n, proof, r), (m, n)
            assert not merkle.verify_inclusion(flip(leaf), m, n, proof, r)
            assert not merkle.verify_inclusion(leaf, m, n, proof, flip(r))
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = flip(bad[i], 3)
                assert not merkle.verify_inclusion(leaf, m, n, bad, r), (m, n, i)
            assert not merkle.verify_inclusion(leaf, m, n, [*proof, r], r)
            assert not merkle.verify_inclusion(leaf, m, n, [r, *proof], r)
            if proof:
                assert not merkle.verify_inclusion(leaf, m, n, proof[:-1], r)
            for other in {2 * n, n // 2}:
                if m < other and other != n:
                    assert not merkle.verify_inclusion(leaf, m, other, proof, r), (m, n, other)
            for other_index in {m - 1, m + 1, m ^ 2}:
                if 0 <= other_index < n and other_index != m:
                    assert not merkle.verify_inclusion(leaf, other_index, n, proof, r)


def test_inclusion_argument_errors() -> None:
    hashes = random_hashes(4)
    with pytest.raises(ValueError, match="out of range"):
        merkle.inclusion_proof(hashes, 4)
    with pytest.raises(ValueError, match=">= 0"):
        merkle.inclusion_proof(hashes, -1)
    with pytest.raises(ValueError, match="out of range"):
        merkle.inclusion_proof([], 0)
    with pytest.raises(ValueError, match="out of range"):
        merkle.verify_inclusion(hashes[0], 4, 4, [], merkle.root(hashes))
    with pytest.raises(ValueError, match="out of range"):
        merkle.verify_inclusion(hashes[0], 0, 0, [], merkle.EMPTY_ROOT)


def test_inclusion_rejects_wrong_length_hashes() -> None:
    h = merkle.leaf_hash(b"data")
    assert merkle.verify_inclusion(h, 0, 1, [], h)
    assert not merkle.verify_inclusion(b"", 0, 1, [], h)
    assert not merkle.verify_inclusion(h, 0, 1, [], b"")
    assert not merkle.verify_inclusion(h, 0, 2, [b""], h)


# --- consistency proofs -------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_golden_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    assert merkle.consistency_proof(GOLDEN_HASHES, old, new) == proof
    assert merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def test_consistency_proofs_verify_and_detect_tampering() -> None:
    hashes = random_hashes(20, seed=4)
    roots = [merkle.root(hashes[:n]) for n in range(21)]
    for n in range(0, 21):
        for m in range(0, n + 1):
            proof = merkle.consistency_proof(hashes, m, n)
            r1, r2 = roots[m], roots[n]
            assert merkle.verify_consistency(m, n, r1, r2, proof), (m, n)
            if m == 0 or m == n:
                assert proof == []
                assert not merkle.verify_consistency(m, n, r1, r2, [r1])
                if m == n and n > 0:
                    assert not merkle.verify_consistency(m, n, r1, flip(r2), proof)
                continue
            assert not merkle.verify_consistency(m, n, flip(r1), r2, proof)
            assert not merkle.verify_consistency(m, n, r1, flip(r2), proof)
            assert not merkle.verify_consistency(m, n, r2, r1, proof)
            assert not merkle.verify_consistency(m, n, r1, r2, [])
            assert not merkle.verify_consistency(m, n, r1, r2, proof[:-1])
            assert not merkle.verify_consistency(m, n, r1, r2, [*proof, r2])
            assert not merkle.verify_consistency(m, n, r1, r2, [proof[0], *proof])
            for i in range(len(proof)):
                bad = list(proof)
                bad[i] = flip(bad[i], 4)
                assert not merkle.verify_consistency(m, n, r1, r2, bad), (m, n, i)
            for m2 in {m - 1, m + 1, m ^ 2}:
                if 0 < m2 <= n and m2 != m:
                    assert not merkle.verify_consistency(m2, n, r1, r2, proof), (m, n, m2)
            for n2 in {2 * n, n // 2}:
                if n2 >= m and n2 != n:
                    assert not merkle.verify_consistency(m, n2, r1, r2, proof), (m, n, n2)


def test_consistency_from_empty_tree() -> None:
    hashes = random_hashes(5)
    r = merkle.root(hashes)
    assert merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, r, [])
    assert merkle.verify_consistency(0, 0, merkle.EMPTY_ROOT, merkle.EMPTY_ROOT, [])
    assert not merkle.verify_consistency(0, 5, r, r, [])


def test_consistency_argument_errors() -> None:
    hashes = random_hashes(4)
    with pytest.raises(ValueError, match="larger than new_size"):
        merkle.consistency_proof(hashes, 3, 2)
    with pytest.raises(ValueError, match="exceeds"):
        merkle.consistency_proof(hashes, 2, 5)
    with pytest.raises(ValueError, match=">= 0"):
        merkle.consistency_proof(hashes, -1, 2)
    r = merkle.root(hashes)
    with pytest.raises(ValueError, match="larger than new_size"):
        merkle.verify_consistency(3, 2, r, r, [])
