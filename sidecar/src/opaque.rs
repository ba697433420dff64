//! Opaque values the issuer hands out (codes, refresh tokens, challenges,
//! token ids) and the hashes it stores instead of them.

use aws_lc_rs::{digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `BYTES` random bytes, base64url: 16 for ids, 32 for bearer values.
pub fn random<const BYTES: usize>() -> String {
    let mut bytes = [0u8; BYTES];
    rand::fill(&mut bytes).expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// 128 bits: ids nobody can guess or collide with.
pub fn id() -> String {
    random::<16>()
}

/// 256 bits: bearer values (codes, refresh tokens, challenges).
pub fn secret() -> String {
    random::<32>()
}

/// base64url SHA-256, the form bearer values are stored in.
pub fn hash(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, value.as_bytes()))
}
