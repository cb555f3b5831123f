#!/usr/bin/env python3
"""An auditor's own check of a Warden audit log, sharing no code with Warden.

It reads only what `warden` prints: the raw export (entry bytes as hashed), the verifier
key, the latest checkpoint note and proofs, and checks them against the specifications:

- leaves and roots per RFC 6962 §2.1 (computed here by the recursive definition);
- the checkpoint per C2SP tlog-checkpoint in a C2SP signed-note, Ed25519 (via `cryptography`),
  key id = SHA-256(name || 0x0A || 0x01 || public key)[:4];
- inclusion and consistency proofs per RFC 9162 §2.1.3.2 / §2.1.4.2;
- every entry is canonical JSON (RFC 8785; our entries hold only ASCII keys and integers or
  short decimals, for which sorted keys and no whitespace is the canonical form) with seq =
  its position.

    python3 tests/audit/auditor.py WARDEN_BINARY DATA_DIR

Exit 0 when every check passes, 1 with the first failure otherwise.
"""
import base64
import hashlib
import json
import subprocess
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha256(b):
    return hashlib.sha256(b).digest()


def leaf(entry):
    return sha256(b"\x00" + entry)


def node(left, right):
    return sha256(b"\x01" + left + right)


def mth(leaves):
    """RFC 6962 §2.1 Merkle Tree Hash, by its recursive definition."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def verify_inclusion(index, size, leaf_hash, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not proof and first_hash == second_hash
    if first == 0 or first > second or not proof:
        return False
    if first & (first - 1) == 0:  # a power of two
        proof = [first_hash] + list(proof)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


def open_note(note, vkey):
    """C2SP signed-note with one Ed25519 key; returns the signed text."""
    name, key_id_hex, material = vkey.split("+", 2)
    material = base64.b64decode(material)
    assert material[0] == 1 and len(material) == 33, "the verifier key is not Ed25519"
    public = material[1:]
    key_id = sha256(name.encode() + b"\n\x01" + public)[:4]
    assert key_id.hex() == key_id_hex, "the verifier key's id does not match its key"
    text, sep, sigs = note.rpartition("\n\n")
    assert sep and text, "the note has no signature block"
    text += "\n"
    for line in sigs.rstrip("\n").split("\n"):
        dash, signer, blob = line.split(" ")
        assert dash == "\u2014", "a signature line must start with an em dash"
        blob = base64.b64decode(blob)
        if signer == name and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text.encode())
            return text
    raise AssertionError(f"no signature by {name}")


def warden(binary, *args):
    return subprocess.run([binary, *args], check=True, capture_output=True).stdout


def main(binary, data):
    raw = warden(binary, "audit", "export", "--format", "raw", "--data", data)
    entries = raw.split(b"\n")[:-1]
    for seq, e in enumerate(entries):
        obj = json.loads(e)
        canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert canonical == e, f"entry {seq} is not canonical JSON"
        assert obj["seq"] == seq, f"entry {seq} says it is {obj['seq']}"
        for field in ("time", "type", "actor"):
            assert field in obj, f"entry {seq} lacks `{field}`"
    leaves = [leaf(e) for e in entries]

    vkey = warden(binary, "audit", "key", "--data", data).decode().strip()
    note = warden(binary, "audit", "checkpoint", "--data", data).decode()
    origin, size, root = open_note(note, vkey).split("\n")[:3]
    size, root = int(size), base64.b64decode(root)
    assert origin == vkey.split("+")[0], "the checkpoint's origin is not the key's name"
    assert size <= len(entries), "the checkpoint covers more entries than exported"
    assert mth(leaves[:size]) == root, "the checkpoint's root is not the root of the entries"

    b64 = lambda hs: [base64.b64decode(h) for h in hs]
    proofs = 0
    for index in sorted({0, 1, size // 2, size - 2, size - 1} - {-1}):
        if not 0 <= index < size:
            continue
        p = json.loads(warden(binary, "audit", "proof", "--index", str(index), "--data", data))
        assert (p["leaf_index"], p["tree_size"]) == (index, size)
        assert base64.b64decode(p["leaf_hash"]) == leaves[index], f"leaf hash of {index}"
        assert verify_inclusion(index, size, leaves[index], b64(p["hashes"]), root), f"inclusion of {index}"
        proofs += 1
    for old in sorted({1, 2, 3, size // 2, size - 1, size} - {0}):
        if not 0 < old <= size:
            continue
        p = json.loads(warden(binary, "audit", "proof", "--old", str(old), "--data", data))
        assert (p["old_size"], p["new_size"]) == (old, size)
        ok = verify_consistency(old, size, mth(leaves[:old]), root, b64(p["hashes"]))
        assert ok, f"consistency {old} -> {size}"
        proofs += 1
    print(f"auditor: {len(entries)} entries, checkpoint {size} signed by {vkey.split('+')[0]}, "
          f"root matches, {proofs} proofs verified")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except AssertionError as e:
        print(f"auditor: FAILED: {e}")
        sys.exit(1)
