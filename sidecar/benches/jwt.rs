//! What one access token costs to sign and to verify, per algorithm, and the
//! `jsonwebtoken::encode` baseline our pre-parsed signer is meant to beat
//! (it re-parses the PKCS#8 key on every call), and a bare Ed25519
//! signature check, the floor of what the agent pays for a first-seen token.
//!
//! `cargo bench -p tokenplane-sidecar --bench jwt` (HTTP-level numbers: hack/bench.sh)

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokenplane_api::claims::{ACCESS_TOKEN_TYP, AccessTokenClaims, Audience};
use tokenplane_api::tokenpolicy::SigningAlgorithm;
use tokenplane_sidecar::keys::KeySet;

/// The claims the issuer signs for the sample client (config/samples).
fn claims() -> AccessTokenClaims {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    AccessTokenClaims {
        iss: "https://issuer.tokenplane.svc.cluster.local".into(),
        sub: "demo.default".into(),
        aud: Audience::One("https://orders.example.com".into()),
        exp: now + 900,
        iat: now,
        nbf: None,
        jti: "q2lV3Jm0o9cY1yHn8kT4xA".into(),
        client_id: "demo.default".into(),
        scope: Some("orders.read".into()),
        auth_time: None,
    }
}

fn jwt(c: &mut Criterion) {
    let claims = claims();
    let keys = [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256, SigningAlgorithm::RS256]
        .map(|alg| (alg.as_str(), KeySet::generate(alg).expect("key generation")));

    let mut sign = c.benchmark_group("sign");
    for (alg, keys) in &keys {
        sign.bench_function(*alg, |b| b.iter(|| keys.sign(black_box(&claims))));
    }
    // Same key type, same header (typ and a thumbprint-sized kid), same claims.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).expect("key generation");
    let key = EncodingKey::from_ed_der(pkcs8.as_ref());
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(ACCESS_TOKEN_TYP.into());
    header.kid = Some("x".repeat(43));
    sign.bench_function("EdDSA jsonwebtoken::encode", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &key).expect("encode"))
    });
    sign.finish();

    let mut verify = c.benchmark_group("verify");
    for (alg, keys) in &keys {
        let token = keys.sign(&claims);
        verify.bench_function(*alg, |b| b.iter(|| keys.verify(black_box(&token)).expect("valid token")));
    }
    // The floor of any EdDSA token verification: the signature check alone,
    // over the same signing input, with the public key parsed once.
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let message = keys[0].1.sign(&claims);
    let (input, _) = message.rsplit_once('.').expect("compact JWS");
    let signature = pair.sign(input.as_bytes());
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    verify.bench_function("Ed25519 raw", |b| {
        b.iter(|| public.verify(black_box(input.as_bytes()), signature.as_ref()).expect("valid signature"))
    });
    verify.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
