//! The pipeline against a real S3 server (versitygw) and the real `age` CLI: round trips,
//! interop both ways, and every failure ending clearly with nothing that looks complete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

use age::secrecy::ExposeSecret;
use age::x25519;
use homeplane_backups::PartPlan;
use homeplane_backups::crypto::{self, Compress, Identity};
use homeplane_backups::manifest::SourceInfo;
use homeplane_backups::pipeline::{self, BackupError, BackupRequest, RestoreError};
use homeplane_backups::store::{S3Config, S3FailureKind, Store, manifest_key, staging_key};
use homeplane_testkit::S3Server;

fn config(bucket: &str) -> S3Config {
    let s3 = S3Server::shared();
    S3Config {
        endpoint: s3.endpoint.clone(),
        bucket: bucket.to_string(),
        region: "auto".into(),
        path_style: true,
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
    }
}

async fn store(prefix: &str) -> Store {
    let store = Store::new(&config(&S3Server::bucket_name(prefix)));
    store.ensure_bucket().await.unwrap();
    store
}

/// Deterministic, moderately compressible bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                (x & 0xff) as u8
            } else {
                b'a' + (i % 7) as u8
            }
        })
        .collect()
}

fn request(key: &str, recipient: &x25519::Recipient, compress: Compress) -> BackupRequest {
    BackupRequest {
        key: key.into(),
        recipients: vec![recipient.clone()],
        compress,
        plan: PartPlan::new(5 << 20, 2).unwrap(),
        source: SourceInfo {
            kind: "stream".into(),
            name: "test".into(),
            namespace: None,
            format: "bytes".into(),
        },
    }
}

fn ids(id: &x25519::Identity) -> Vec<Identity> {
    vec![Box::new(id.clone())]
}

async fn get(store: &Store, key: &str) -> Vec<u8> {
    let out = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Nothing under `key` but what a succeeded backup leaves, and no open upload.
async fn assert_clean(store: &Store, key: &str) {
    let keys = store.list(key).await.unwrap();
    assert!(keys.is_empty(), "objects left after a failure: {keys:?}");
    let open = store.open_uploads(key).await.unwrap();
    assert!(open.is_empty(), "multipart uploads left open: {open:?}");
}

#[tokio::test]
async fn round_trip_writes_checked_object_and_manifest() {
    let store = store("roundtrip").await;
    let id = x25519::Identity::generate();
    let plain = data(13 << 20);
    let key = "homelab/db/one.dump.zst.age";
    let report = pipeline::backup(
        &store,
        std::io::Cursor::new(plain.clone()),
        request(key, &id.to_public(), Compress::Zstd(3)),
    )
    .await
    .unwrap();
    let m = &report.manifest;
    assert_eq!(m.source_bytes, plain.len() as u64);
    assert!(
        m.encrypted_bytes < m.source_bytes,
        "zstd should shrink this data"
    );
    let object = get(&store, key).await;
    assert_eq!(object.len() as u64, m.encrypted_bytes);
    let info = store.head(key).await.unwrap().unwrap();
    assert_eq!(info.metadata.get("sha256"), Some(&m.sha256));
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&object)), m.sha256);
    let manifest: serde_json::Value =
        serde_json::from_slice(&get(&store, &manifest_key(key)).await).unwrap();
    assert_eq!(manifest["sha256"], m.sha256.as_str());
    assert_eq!(
        manifest["recipients"][0],
        crypto::fingerprint(&id.to_public()).as_str()
    );
    assert!(
        store.head(&staging_key(key)).await.unwrap().is_none(),
        "staging object left"
    );
    assert!(store.open_uploads(key).await.unwrap().is_empty());

    let (restored, out) = pipeline::restore(&store, key, ids(&id), Some(&m.sha256), Vec::new())
        .await
        .unwrap();
    assert_eq!(out, plain);
    assert_eq!(restored.plain_bytes, plain.len() as u64);
}

#[tokio::test]
async fn large_objects_are_published_part_by_part() {
    let store = store("partcopy").await.with_copy_in_one_limit(1);
    let id = x25519::Identity::generate();
    let plain = data(11 << 20);
    let key = "big.age";
    let report = pipeline::backup(
        &store,
        std::io::Cursor::new(plain.clone()),
        request(key, &id.to_public(), Compress::None),
    )
    .await
    .unwrap();
    assert_eq!(report.manifest.parts, 3);
    let (_, out) = pipeline::restore(&store, key, ids(&id), None, Vec::new())
        .await
        .unwrap();
    assert_eq!(out, plain);
}

#[tokio::test]
async fn age_cli_decrypts_homeplane_and_homeplane_decrypts_age_cli() {
    let store = store("interop").await;
    let dir = std::env::temp_dir().join(format!("hp-interop-{}", homeplane_testkit::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = x25519::Identity::generate();
    let key_file = dir.join("key.txt");
    std::fs::write(
        &key_file,
        format!(
            "# created by a test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    let plain = data(6 << 20);

    // homeplane → age -d (then zstd -d)
    pipeline::backup(
        &store,
        std::io::Cursor::new(plain.clone()),
        request("x.zst.age", &id.to_public(), Compress::Zstd(1)),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("x.zst.age"), get(&store, "x.zst.age").await).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("age -d -i key.txt x.zst.age | zstd -d -c")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == plain,
        "age -d | zstd -d did not give back the source"
    );

    // age -r → homeplane (local file and through the bucket)
    let mut child = Command::new("age")
        .args(["-r", &id.to_public().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = plain.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let sealed = child.wait_with_output().unwrap().stdout;
    writer.join().unwrap();
    let text = std::fs::read_to_string(&key_file).unwrap();
    let identities = crypto::parse_identities(&text).unwrap();
    let (_, out) = crypto::decrypt(&sealed[..], &identities, Compress::None, Vec::new()).unwrap();
    assert!(
        out == plain,
        "homeplane did not decrypt what age -r encrypted"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn damaged_truncated_or_foreign_objects_and_wrong_keys_fail_clearly() {
    let store = store("damage").await;
    let id = x25519::Identity::generate();
    let plain = data(7 << 20);
    let key = "d.age";
    let m = pipeline::backup(
        &store,
        std::io::Cursor::new(plain),
        request(key, &id.to_public(), Compress::Zstd(3)),
    )
    .await
    .unwrap()
    .manifest;
    let object = get(&store, key).await;
    let info = store.head(key).await.unwrap().unwrap();
    let put = |key: &'static str, body: Vec<u8>| {
        let store = store.clone();
        let metadata = info.metadata.clone();
        async move {
            store
                .client()
                .put_object()
                .bucket(store.bucket())
                .key(key)
                .set_metadata(Some(metadata))
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    };

    // Wrong identity.
    let other = x25519::Identity::generate();
    let err = pipeline::restore(&store, key, ids(&other), None, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::WrongIdentity(_)), "{err}");
    assert!(
        err.to_string().contains("none of the given age identities"),
        "{err}"
    );

    // One flipped byte in the middle.
    let mut corrupt = object.clone();
    corrupt[object.len() / 2] ^= 0x40;
    put("corrupt.age", corrupt).await;
    let err = pipeline::restore(&store, "corrupt.age", ids(&id), None, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("is damaged"), "{err}");

    // Truncated (what an interrupted copy leaves).
    put("short.age", object[..object.len() - 1000].to_vec()).await;
    let err = pipeline::restore(&store, "short.age", ids(&id), None, Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is damaged"), "{err}");

    // A record that disagrees with the object.
    let err = pipeline::restore(&store, key, ids(&id), Some(&"0".repeat(64)), Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&m.sha256), "{err}");

    // An object without homeplane's checksum.
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key("foreign")
        .body(object.into())
        .send()
        .await
        .unwrap();
    let err = pipeline::restore(&store, "foreign", ids(&id), None, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::NoChecksum(_)), "{err}");

    let err = pipeline::restore(&store, "missing", ids(&id), None, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::NotFound { .. }), "{err}");
}

/// A source that fails after `good` bytes, like pg_dump dying mid-dump.
struct FailingSource {
    left: usize,
}

impl tokio::io::AsyncRead for FailingSource {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("pg_dump: connection lost")));
        }
        let n = buf.remaining().min(self.left).min(64 << 10);
        let bytes = data(n);
        buf.put_slice(&bytes);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_source_failing_midway_aborts_the_upload() {
    let store = store("midway").await;
    let id = x25519::Identity::generate();
    let key = "midway.age";
    let err = pipeline::backup(
        &store,
        FailingSource { left: 23 << 20 },
        request(key, &id.to_public(), Compress::None),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackupError::Source(_)), "{err}");
    assert!(err.to_string().contains("connection lost"), "{err}");
    assert_clean(&store, key).await;
}

#[tokio::test]
async fn an_existing_backup_is_never_overwritten() {
    let store = store("exists").await;
    let id = x25519::Identity::generate();
    let key = "same.age";
    let first = pipeline::backup(
        &store,
        std::io::Cursor::new(data(1000)),
        request(key, &id.to_public(), Compress::None),
    )
    .await
    .unwrap();
    let err = pipeline::backup(
        &store,
        std::io::Cursor::new(data(2000)),
        request(key, &id.to_public(), Compress::None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, BackupError::S3(e) if e.kind == S3FailureKind::AlreadyExists),
        "{err}"
    );
    let info = store.head(key).await.unwrap().unwrap();
    assert_eq!(info.metadata.get("sha256"), Some(&first.manifest.sha256));
    assert!(store.head(&staging_key(key)).await.unwrap().is_none());
    assert!(store.open_uploads(key).await.unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_endpoint_and_bad_credentials_fail_clearly() {
    let id = x25519::Identity::generate();
    let port = homeplane_testkit::free_port().unwrap();
    let mut unreachable = config("nowhere");
    unreachable.endpoint = format!("http://127.0.0.1:{port}");
    let err = pipeline::backup(
        &Store::new(&unreachable),
        std::io::Cursor::new(data(10)),
        request("k", &id.to_public(), Compress::None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, BackupError::S3(e) if e.kind == S3FailureKind::Unreachable),
        "{err}"
    );
    assert!(err.to_string().contains("could not be reached"), "{err}");

    let good = store("creds").await;
    let mut revoked = config(good.bucket());
    revoked.secret_access_key = "expired-or-revoked-secret".into();
    let err = pipeline::backup(
        &Store::new(&revoked),
        std::io::Cursor::new(data(10)),
        request("k", &id.to_public(), Compress::None),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, BackupError::S3(e) if e.kind == S3FailureKind::Credentials),
        "{err}"
    );
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    let mut unknown = config(good.bucket());
    unknown.access_key_id = "AKIDOESNOTEXIST".into();
    let err = pipeline::backup(
        &Store::new(&unknown),
        std::io::Cursor::new(data(10)),
        request("k", &id.to_public(), Compress::None),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert_clean(&good, "k").await;
}
