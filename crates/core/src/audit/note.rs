//! C2SP `signed-note` with Ed25519 keys, and C2SP `tlog-checkpoint` bodies.
//!
//! A note is a text ending in a newline, a blank line, then signature lines
//! `— <key name> base64(key id ‖ signature)`. The key id is the first four bytes of
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`; verifier keys are written
//! `<name>+<key id in hex>+base64(0x01 ‖ public key)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The Ed25519 signature type byte of signed-note keys.
const ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";

/// Why a note, key or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("key name `{0}` must be non-empty, without spaces or `+`")]
    BadKeyName(String),
    #[error("malformed verifier key")]
    BadVerifierKey,
    #[error("malformed signer key (expected `PRIVATE+KEY+<name>+<key id>+<base64 key>`)")]
    BadSignerKey,
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("the note carries no signature by key `{0}`")]
    NoSignature(String),
    #[error("the signature by key `{0}` does not verify")]
    BadSignature(String),
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::BadKeyName(name.to_string()));
    }
    Ok(())
}

/// Signs notes with an Ed25519 key. The seed comes from outside: the core draws no randomness.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("NoteSigner").field("name", &self.name).finish_non_exhaustive()
    }
}

impl NoteSigner {
    pub fn new(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, &key.verifying_key().to_bytes());
        Ok(Self { name: name.to_string(), id, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<name>+<hex key id>+base64(0x01 ‖ public key)`.
    pub fn verifier_key(&self) -> String {
        let mut material = vec![ED25519];
        material.extend_from_slice(&self.key.verifying_key().to_bytes());
        let id: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}+{id}+{}", self.name, B64.encode(material))
    }

    /// The signer key in the format of Go's `golang.org/x/mod/sumdb/note`:
    /// `PRIVATE+KEY+<name>+<hex key id>+base64(0x01 ‖ seed)`. Secret: write it only to a file
    /// only its owner can read.
    pub fn to_private_key(&self) -> String {
        let mut material = vec![ED25519];
        material.extend_from_slice(&self.key.to_bytes());
        let id: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!("PRIVATE+KEY+{}+{id}+{}", self.name, B64.encode(material))
    }

    /// Parses a signer key written by [`NoteSigner::to_private_key`] (or by Go's `note`
    /// package), checking its key id.
    pub fn from_private_key(text: &str) -> Result<Self, NoteError> {
        let rest = text.trim_end().strip_prefix("PRIVATE+KEY+").ok_or(NoteError::BadSignerKey)?;
        // Names have no `+`; base64 may.
        let mut parts = rest.splitn(3, '+');
        let (name, id, material) = match (parts.next(), parts.next(), parts.next()) {
            (Some(n), Some(i), Some(m)) => (n, i, m),
            _ => return Err(NoteError::BadSignerKey),
        };
        let material = B64.decode(material).map_err(|_| NoteError::BadSignerKey)?;
        let seed: [u8; 32] = match material.split_first() {
            Some((&ED25519, seed)) => seed.try_into().map_err(|_| NoteError::BadSignerKey)?,
            _ => return Err(NoteError::BadSignerKey),
        };
        let signer = Self::new(name, &seed)?;
        let expected: String = signer.id.iter().map(|b| format!("{b:02x}")).collect();
        if id != expected {
            return Err(NoteError::BadSignerKey);
        }
        Ok(signer)
    }

    /// The signed note for `text`, which must end in a newline.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') {
            return Err(NoteError::Malformed("text must end with a newline"));
        }
        let sig = self.key.sign(text.as_bytes()).to_bytes();
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&sig);
        Ok(format!("{text}\n{DASH}{} {}\n", self.name, B64.encode(blob)))
    }
}

/// Verifies notes signed by one Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex key id>+base64(0x01 ‖ public key)`; the id must match the key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadVerifierKey);
        };
        check_name(name).map_err(|_| NoteError::BadVerifierKey)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(NoteError::BadVerifierKey);
        }
        let material = B64.decode(material).map_err(|_| NoteError::BadVerifierKey)?;
        let [ED25519, public @ ..] = material.as_slice() else { return Err(NoteError::BadVerifierKey) };
        let public: [u8; 32] = public.try_into().map_err(|_| NoteError::BadVerifierKey)?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::BadVerifierKey)?;
        let id = key_id(name, &public);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        if hex != id_hex {
            return Err(NoteError::BadVerifierKey);
        }
        Ok(Self { name: name.to_string(), id, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid signature by this key; returns the signed text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(NoteError::Malformed("signature lines must end with a newline"));
        }
        let mut found = false;
        for line in sigs.lines() {
            let rest = line.strip_prefix(DASH).ok_or(NoteError::Malformed("signature line without `— `"))?;
            let (name, b64) = rest.split_once(' ').ok_or(NoteError::Malformed("signature line without a name"))?;
            let blob = B64.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id {
                continue;
            }
            found = true;
            let sig: [u8; 64] = blob[4..].try_into().map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            self.key
                .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
        }
        if found { Ok(text) } else { Err(NoteError::NoSignature(self.name.clone())) }
    }
}

/// A C2SP `tlog-checkpoint`: origin, tree size, root hash, optional extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n` then extension lines.
    pub fn body(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body (the text of an opened note).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let body = text.strip_suffix('\n').ok_or(NoteError::BadCheckpoint("text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(NoteError::BadCheckpoint("empty origin"))?;
        let size = lines.next().ok_or(NoteError::BadCheckpoint("missing tree size"))?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(NoteError::BadCheckpoint("tree size must be a decimal number without leading zeros"));
        }
        let size = size.parse().map_err(|_| NoteError::BadCheckpoint("tree size too large"))?;
        let root = lines.next().ok_or(NoteError::BadCheckpoint("missing root hash"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::BadCheckpoint("root hash must be 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(NoteError::BadCheckpoint("blank line in the checkpoint"));
        }
        Ok(Self { origin: origin.to_string(), size, root, extensions })
    }

    /// Signs this checkpoint as a note.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        signer.sign(&self.body())
    }

    /// Opens a signed checkpoint note with `verifier`.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self, NoteError> {
        Self::parse(verifier.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_keys_round_trip_and_are_checked() {
        let signer = NoteSigner::new("warden.local/audit", &[9u8; 32]).unwrap();
        let text = signer.to_private_key();
        assert!(text.starts_with("PRIVATE+KEY+warden.local/audit+"), "{text}");
        let back = NoteSigner::from_private_key(&format!("{text}\n")).unwrap();
        assert_eq!(back.verifier_key(), signer.verifier_key());
        let wrong_id = text.replacen("+warden.local/audit+", "+other+", 1);
        assert_eq!(NoteSigner::from_private_key(&wrong_id).unwrap_err(), NoteError::BadSignerKey);
        assert_eq!(NoteSigner::from_private_key(&signer.verifier_key()).unwrap_err(), NoteError::BadSignerKey);
    }

    /// golang.org/x/mod/sumdb/note's published example: the same seed must give the same
    /// verifier key and, Ed25519 being deterministic, the same signed note byte for byte.
    #[test]
    fn matches_the_go_sumdb_note_example() {
        let skey = B64.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        let seed: [u8; 32] = skey[1..].try_into().unwrap();
        let signer = NoteSigner::new("PeterNeumann", &seed).unwrap();
        assert_eq!(signer.verifier_key(), "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
        let text =
            "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let want = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        assert_eq!(signer.sign(text).unwrap(), want);
        let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(verifier.open(&want).unwrap(), text);
        let go_private = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        assert_eq!(signer.to_private_key(), go_private);
        assert_eq!(NoteSigner::from_private_key(go_private).unwrap().verifier_key(), signer.verifier_key());
    }

    fn signer() -> NoteSigner {
        NoteSigner::new("warden.local/audit", &[7u8; 32]).unwrap()
    }

    #[test]
    fn checkpoints_round_trip_and_tampering_fails() {
        let s = signer();
        let v = NoteVerifier::parse(&s.verifier_key()).unwrap();
        let cp = Checkpoint { origin: "warden.local/audit".into(), size: 42, root: [9u8; 32], extensions: vec![] };
        let note = cp.sign(&s).unwrap();
        assert!(note.starts_with(
            "warden.local/audit\n42\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n\n\u{2014} warden.local/audit "
        ));
        assert_eq!(Checkpoint::open(&note, &v).unwrap(), cp);

        let tampered = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(Checkpoint::open(&tampered, &v), Err(NoteError::BadSignature("warden.local/audit".into())));
        let other = NoteSigner::new("warden.local/audit", &[8u8; 32]).unwrap();
        let v2 = NoteVerifier::parse(&other.verifier_key()).unwrap();
        assert_eq!(Checkpoint::open(&note, &v2), Err(NoteError::NoSignature("warden.local/audit".into())));
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let v = NoteVerifier::parse(&signer().verifier_key()).unwrap();
        for bad in ["", "a\n", "a\n\n", "a\n\nno dash\n", "a\n\n\u{2014} warden.local/audit !!!\n"] {
            assert!(v.open(bad).is_err(), "{bad:?}");
        }
        for bad in ["x+1234abcd+AQ==", "x", "a b+00000000+AQ", "x+zzzzzzzz+AQ"] {
            assert_eq!(NoteVerifier::parse(bad), Err(NoteError::BadVerifierKey), "{bad}");
        }
        let mut vk = signer().verifier_key();
        vk.replace_range(vk.find('+').unwrap() + 1..vk.find('+').unwrap() + 3, "00");
        assert_eq!(NoteVerifier::parse(&vk), Err(NoteError::BadVerifierKey), "a key id that does not match");
        for bad in ["o\n01\nAA==\n", "o\n1\nAA==\n", "\n1\n", "o\nx\n"] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        assert!(NoteSigner::new("has space", &[0; 32]).is_err());
        assert!(signer().sign("no newline").is_err());
    }
}
