"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs (pure functions).

The tree is the Certificate Transparency Merkle Tree Hash (MTH) over SHA-256 with domain
separation between leaves and interior nodes (RFC 6962 §2.1, RFC 9162 §2.1.1):

* ``leaf_hash(d)    = SHA-256(0x00 || d)``
* ``node_hash(l, r) = SHA-256(0x01 || l || r)``
* ``MTH({})         = SHA-256("")``

Every function here takes *leaf hashes* (already domain-separated), not raw entries, except
:func:`leaf_hash` itself. Proof generators take the full list of leaf hashes and are meant for
tests, small trees and the standalone verifier; the log itself grows with :class:`TreeBuilder`,
which keeps only the O(log n) compact range of perfect-subtree roots.

Argument errors (negative sizes, an index outside the tree, ``old_size > new_size``) raise
:class:`ValueError`; a proof that simply does not verify makes the ``verify_*`` functions return
``False``.

The formats and test vectors follow ``transparency-dev/merkle`` (``rfc6962/``, ``proof/``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH of the empty tree, RFC 6962 §2.1: the hash of the empty string."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash one log entry as a Merkle leaf.

    RFC 6962 §2.1: ``MTH({d(0)}) = SHA-256(0x00 || d(0))``.

    Args:
        data: The raw entry bytes.

    Returns:
        The 32-byte leaf hash.
    """
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two child hashes into their parent.

    RFC 6962 §2.1: ``SHA-256(0x01 || MTH(left) || MTH(right))``.

    Args:
        left: Hash of the left subtree.
        right: Hash of the right subtree.

    Returns:
        The 32-byte interior node hash.
    """
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of ``hashes[lo:hi]`` (``hi > lo``), RFC 6962 §2.1, without slicing."""
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return _sha256(_NODE_PREFIX + _mth(hashes, lo, lo + k) + _mth(hashes, lo + k, hi)).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Compute the Merkle Tree Hash of a list of leaf hashes.

    RFC 6962 §2.1 (RFC 9162 §2.1.1): for ``n > 1``, let ``k`` be the largest power of two
    smaller than ``n``; ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``.

    Args:
        leaf_hashes: Leaf hashes (see :func:`leaf_hash`) in log order.

    Returns:
        The 32-byte root; :data:`EMPTY_ROOT` for an empty list.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


class TreeBuilder:
    """Incremental RFC 6962 tree over appended leaf hashes, in O(log n) memory.

    The state is the compact range ``[0, size)``: the roots of the perfect subtrees given by
    the binary decomposition of ``size``, largest (leftmost) first. Appending merges equal-
    sized subtrees like a binary counter (amortised one node hash per append); :meth:`root`
    folds the stack from the right, which is exactly the RFC 6962 §2.1 split rule.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._nodes: list[bytes] = []
        self._size = 0

    @classmethod
    def from_compact_range(cls, size: int, nodes: Iterable[bytes]) -> TreeBuilder:
        """Resume a builder from a saved :attr:`compact_range`.

        Args:
            size: Number of leaves already in the tree.
            nodes: The perfect-subtree roots, largest first, one per set bit of ``size``.

        Returns:
            A builder in the same state as the one that produced ``nodes``.

        Raises:
            ValueError: If the number or length of the hashes does not match ``size``.
        """
        _check_size("size", size)
        node_list = [bytes(h) for h in nodes]
        if len(node_list) != size.bit_count():
            raise ValueError(
                f"compact range for size {size} needs {size.bit_count()} hashes, "
                f"got {len(node_list)}"
            )
        if any(len(h) != HASH_SIZE for h in node_list):
            raise ValueError(f"compact range hashes must be {HASH_SIZE} bytes")
        builder = cls()
        builder._nodes = node_list
        builder._size = size
        return builder

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def compact_range(self) -> tuple[bytes, ...]:
        """Perfect-subtree roots covering ``[0, size)``, largest first (for persistence)."""
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (see :func:`leaf_hash`) to the tree.

        Args:
            leaf_hash: The 32-byte hash of the new leaf.

        Raises:
            ValueError: If ``leaf_hash`` is not 32 bytes long.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        nodes = self._nodes
        h = leaf_hash
        n = self._size
        # Each trailing 1 bit of the old size is a perfect subtree of the same height as the
        # one being carried: merge it (RFC 6962 §2.1 with k = that subtree's size).
        while n & 1:
            h = _sha256(_NODE_PREFIX + nodes.pop() + h).digest()
            n >>= 1
        nodes.append(h)
        self._size += 1

    def root(self) -> bytes:
        """Return the current Merkle Tree Hash; equal to :func:`root` over all appended leaves.

        Returns:
            The 32-byte root; :data:`EMPTY_ROOT` when nothing has been appended.
        """
        nodes = self._nodes
        if not nodes:
            return EMPTY_ROOT
        h = nodes[-1]
        for i in range(len(nodes) - 2, -1, -1):
            h = _sha256(_NODE_PREFIX + nodes[i] + h).digest()
        return h


def _path(hashes: Sequence[bytes], m: int, lo: int, hi: int, out: list[bytes]) -> None:
    """Append PATH(m, D[lo:hi]) (RFC 6962 §2.1.1) to ``out``, deepest node first."""
    n = hi - lo
    if n == 1:
        return
    k = _split(n)
    if m < k:
        _path(hashes, m, lo, lo + k, out)
        out.append(_mth(hashes, lo + k, hi))
    else:
        _path(hashes, m - k, lo + k, hi, out)
        out.append(_mth(hashes, lo, lo + k))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Build the audit path for the leaf at ``index`` (RFC 6962 §2.1.1, RFC 9162 §2.1.3.1).

    Args:
        leaf_hashes: All leaf hashes of the tree, in order.
        index: Zero-based index of the leaf to prove.

    Returns:
        The sibling hashes from the leaf level upwards (empty for a one-leaf tree).

    Raises:
        ValueError: If ``index`` is not in ``[0, len(leaf_hashes))``.
    """
    _check_size("index", index)
    size = len(leaf_hashes)
    if index >= size:
        raise ValueError(f"leaf index {index} out of range for tree size {size}")
    out: list[bytes] = []
    _path(leaf_hashes, index, 0, size, out)
    return out


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) == HASH_SIZE


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Verify an inclusion proof, RFC 9162 §2.1.3.2.

    Args:
        leaf_hash: Hash of the leaf claimed to be at ``index``.
        index: Zero-based leaf index.
        size: Tree size the proof is for.
        proof: Audit path from :func:`inclusion_proof`.
        root: Expected root of the tree of ``size`` leaves.

    Returns:
        ``True`` only if the proof recomputes ``root`` exactly and has no extra elements.

    Raises:
        ValueError: If ``index`` is negative or not smaller than ``size``.
    """
    _check_size("index", index)
    _check_size("size", size)
    if index >= size:
        raise ValueError(f"leaf index {index} out of range for tree size {size}")
    if not _is_hash(leaf_hash) or not _is_hash(root) or not all(_is_hash(p) for p in proof):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def _subproof(
    hashes: Sequence[bytes], m: int, lo: int, hi: int, complete: bool, out: list[bytes]
) -> None:
    """Append SUBPROOF(m, D[lo:hi], b) (RFC 6962 §2.1.2) to ``out``, deepest node first."""
    n = hi - lo
    if m == n:
        if not complete:
            out.append(_mth(hashes, lo, hi))
        return
    k = _split(n)
    if m <= k:
        _subproof(hashes, m, lo, lo + k, complete, out)
        out.append(_mth(hashes, lo + k, hi))
    else:
        _subproof(hashes, m - k, lo + k, hi, False, out)
        out.append(_mth(hashes, lo, lo + k))


def _check_sizes(old_size: int, new_size: int) -> None:
    _check_size("old_size", old_size)
    _check_size("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} is larger than new_size {new_size}")


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Build a consistency proof between two tree sizes (RFC 6962 §2.1.2, RFC 9162 §2.1.4.1).

    Args:
        leaf_hashes: Leaf hashes of (at least) the first ``new_size`` leaves.
        old_size: Size of the earlier tree.
        new_size: Size of the later tree.

    Returns:
        ``PROOF(old_size, D[new_size])``; empty when ``old_size`` is 0 or equals ``new_size``.

    Raises:
        ValueError: If ``old_size > new_size`` or ``new_size > len(leaf_hashes)``.
    """
    _check_sizes(old_size, new_size)
    if new_size > len(leaf_hashes):
        raise ValueError(f"new_size {new_size} exceeds the {len(leaf_hashes)} leaves given")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[bytes] = []
    _subproof(leaf_hashes, old_size, 0, new_size, True, out)
    return out


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Verify that the tree with ``new_root`` extends the tree with ``old_root``.

    RFC 9162 §2.1.4.2, plus the two trivial cases: an empty old tree is consistent with any
    tree (the proof must be empty and ``old_root`` must be :data:`EMPTY_ROOT`), and equal
    sizes need an empty proof and equal roots.

    Args:
        old_size: Size of the earlier tree.
        new_size: Size of the later tree.
        old_root: Root of the earlier tree.
        new_root: Root of the later tree.
        proof: Proof from :func:`consistency_proof`.

    Returns:
        ``True`` only if the proof is exactly the right length and recomputes both roots.

    Raises:
        ValueError: If a size is negative or ``old_size > new_size``.
    """
    _check_sizes(old_size, new_size)
    if not _is_hash(old_root) or not _is_hash(new_root):
        return False
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if not proof or not all(_is_hash(p) for p in proof):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # old tree is a perfect subtree: its root is the seed.
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
