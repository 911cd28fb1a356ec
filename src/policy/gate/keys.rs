//! Cosign public keys (`cosign.pub`: a PEM `PUBLIC KEY`, the key's X.509
//! SubjectPublicKeyInfo) and signature checks with `ring`.
//!
//! ring verifies but takes raw keys, not SPKI. The PEM armour is removed
//! by `rustls-pki-types`; of the DER, only the two key types cosign uses
//! are accepted, and DER being canonical, each has exactly one encoding of
//! its AlgorithmIdentifier: ECDSA P-256 (id-ecPublicKey, prime256v1) then
//! a 65-byte uncompressed point, or Ed25519 (id-Ed25519) then 32 bytes.
//! ring itself checks that the point is on the curve.

use std::path::{Path, PathBuf};

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;

/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, 0 unused bits) }
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// SEQUENCE { SEQUENCE { id-Ed25519 }, BIT STRING (33 bytes, 0 unused bits) }
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256,
    Ed25519,
}

/// One trusted key, with the file it came from (named in logs and in the
/// admin API's answers).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    raw: Vec<u8>,
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM PUBLIC KEY block ({detail})", path.display())]
    NotPem { path: PathBuf, detail: String },
    #[error("{}: only ECDSA P-256 and Ed25519 public keys are supported", path.display())]
    Unsupported { path: PathBuf },
}

impl PublicKey {
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        PublicKey::from_pem(&text, path)
    }

    pub fn from_pem(text: &[u8], path: &Path) -> Result<PublicKey, KeyError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(text).map_err(|e| KeyError::NotPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let der: &[u8] = spki.as_ref();
        let (algorithm, raw) = if let Some(point) = der
            .strip_prefix(&P256_SPKI_PREFIX[..])
            .filter(|p| p.len() == 65 && p[0] == 0x04)
        {
            (Algorithm::EcdsaP256, point)
        } else if let Some(key) = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .filter(|k| k.len() == 32)
        {
            (Algorithm::Ed25519, key)
        } else {
            return Err(KeyError::Unsupported {
                path: path.to_owned(),
            });
        };
        Ok(PublicKey {
            algorithm,
            raw: raw.to_vec(),
            file: path.to_owned(),
        })
    }

    /// Whether `signature` (ASN.1 DER for ECDSA, as cosign writes it; 64
    /// bytes for Ed25519) signs `message` with this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &'static dyn ring::signature::VerificationAlgorithm = match self.algorithm {
            Algorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            Algorithm::Ed25519 => &ED25519,
        };
        UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    // sigstore/sigstore-rs src/cosign/signature_layers.rs (see
    // tests/fixtures/cosign/README.md): a cosign-generated key, and a
    // signature it made over this simplesigning payload.
    const KEY: &str = include_str!("../../../tests/fixtures/cosign/cosign.pub");
    const OTHER: &str = include_str!("../../../tests/fixtures/cosign/other.pub");
    const PAYLOAD: &[u8] = include_bytes!("../../../tests/fixtures/cosign/payload.json");
    const SIGNATURE: &str = include_str!("../../../tests/fixtures/cosign/signature.b64");

    #[test]
    fn the_cosign_fixture_verifies_with_its_key_only() {
        let key = PublicKey::from_pem(KEY.as_bytes(), Path::new("cosign.pub")).unwrap();
        assert_eq!(key.algorithm, Algorithm::EcdsaP256);
        let sig = base64::engine::general_purpose::STANDARD
            .decode(SIGNATURE.trim())
            .unwrap();
        assert!(key.verifies(PAYLOAD, &sig));
        let mut tampered = PAYLOAD.to_vec();
        tampered[10] ^= 1;
        assert!(!key.verifies(&tampered, &sig));
        let other = PublicKey::from_pem(OTHER.as_bytes(), Path::new("other.pub")).unwrap();
        assert!(!other.verifies(PAYLOAD, &sig));
    }

    #[test]
    fn other_key_types_and_garbage_are_refused_by_name() {
        let e = PublicKey::from_pem(b"not a key", Path::new("/k.pub")).unwrap_err();
        assert!(
            e.to_string().starts_with("/k.pub: no PEM PUBLIC KEY"),
            "{e}"
        );
        // A P-384 key (id-ecPublicKey, secp384r1).
        let p384 = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEX8hgRLzQNzyv61j7dtYbqJR1qA1j39JQ\nE1WmznVeGk4m3jFClyBQ0BhLdPlqJLrLkkmDKWtAgJtt85QLGawgBFoHVc7BzKQp\nzI8XzultbiRgFjQoh+5BDK/H6gA2mlck\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(p384.as_bytes(), Path::new("p384.pub")).unwrap_err();
        assert!(matches!(e, KeyError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn ed25519_keys_verify() {
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let key = PublicKey::from_pem(pem.as_bytes(), Path::new("ed.pub")).unwrap();
        assert_eq!(key.algorithm, Algorithm::Ed25519);
        let sig = pair.sign(b"payload");
        assert!(key.verifies(b"payload", sig.as_ref()));
        assert!(!key.verifies(b"payloaD", sig.as_ref()));
    }
}
