//! What sealing one TLS record costs here, per suite the links may
//! negotiate: the AEAD rustls calls (aws-lc-rs), for 4 KiB and 16 KiB
//! records. For BENCHMARKS.md: run on the host and in the test VM to tell
//! a cost of TCG's emulation from a real one.
//!
//! Usage: cargo run --release -p identity --example record_seal [SECONDS]

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(seconds);
    println!("| AEAD | record | µs per record | MiB/s |");
    println!("|---|---|---|---|");
    for (name, algorithm) in [
        ("AES-128-GCM", &AES_128_GCM),
        ("AES-256-GCM", &AES_256_GCM),
        ("ChaCha20-Poly1305", &CHACHA20_POLY1305),
    ] {
        for size in [4096, 16384] {
            let (records, took) = seal_for(algorithm, size, budget);
            let per = took.as_secs_f64() / records as f64;
            let rate = size as f64 / per / f64::from(1 << 20);
            println!(
                "| {name} | {} KiB | {:.1} | {rate:.0} |",
                size >> 10,
                per * 1e6
            );
        }
    }
}

/// Seals records of `size` bytes with `algorithm` for about `budget`;
/// returns how many, and how long they took.
fn seal_for(algorithm: &'static Algorithm, size: usize, budget: Duration) -> (u64, Duration) {
    let key = [7u8; 32];
    let Ok(key) = UnboundKey::new(algorithm, &key[..algorithm.key_len()]) else {
        eprintln!("no key for {algorithm:?}");
        std::process::exit(1);
    };
    let key = LessSafeKey::new(key);
    let mut record = vec![0x5a; size];
    let started = Instant::now();
    let mut records = 0u64;
    while started.elapsed() < budget {
        for _ in 0..64 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&records.to_be_bytes());
            let nonce = Nonce::assume_unique_for_key(nonce);
            if key
                .seal_in_place_separate_tag(nonce, Aad::from([23, 3, 3, 0, 0]), &mut record)
                .is_err()
            {
                eprintln!("sealing failed");
                std::process::exit(1);
            }
            records += 1;
        }
    }
    (records, started.elapsed())
}
