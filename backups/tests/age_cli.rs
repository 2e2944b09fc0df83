//! The encryption stage against the real `age` CLI: whatever the size and the number of
//! sealing threads, `age -d` gives back the plaintext, and homeplane reads what `age -r` wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use age::secrecy::ExposeSecret;
use age::x25519;
use homeplane_backups::crypto::{self, Compress};
use homeplane_testkit::pattern;

const CHUNK: usize = 64 * 1024;

/// Runs `age` with `args`, `input` on its stdin; returns its stdout.
fn age(args: &[&str], input: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new("age")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the age CLI (Debian's `age`) is installed by scripts/setup.sh");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "age {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_age_cli_decrypts_every_size_on_any_number_of_threads_and_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let id = x25519::Identity::generate();
    let key = dir.path().join("key.txt");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    let key = key.to_string_lossy().to_string();
    for len in [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        8 * CHUNK,
        8 * CHUNK + 1,
        51 * CHUNK + 13,
    ] {
        let plain = pattern(len, 0x2545_F491_4F6C_DD1D ^ len as u64);
        for threads in [0, 2, 3] {
            let (_, sealed) = crypto::encrypt_on(
                &plain[..],
                &[id.to_public()],
                Compress::None,
                Vec::new(),
                threads,
            )
            .unwrap();
            let opened = age(&["-d", "-i", &key], sealed);
            assert!(
                opened == plain,
                "age -d of {len} bytes sealed on {threads} threads"
            );
        }
        let sealed = age(&["-r", &id.to_public().to_string()], plain.clone());
        let ids = crypto::parse_identities(&std::fs::read_to_string(&key).unwrap()).unwrap();
        let (_, opened) = crypto::decrypt(&sealed[..], &ids, Compress::None, Vec::new()).unwrap();
        assert!(
            opened == plain,
            "homeplane's decryption of age -r, {len} bytes"
        );
    }
}
