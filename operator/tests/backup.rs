//! Backups end to end against the real control plane, a real PostgreSQL, a real S3 server
//! (versitygw) and the real `age` CLI: `kubectl create` of a Backup runs pg_dump through the
//! pipeline into the bucket; the object decrypts with `age -d`; `homeplane restore` gives back
//! the same rows; bad credentials, an unreachable endpoint and an interrupted run each end
//! `Failed` with a clear message and nothing that looks complete in the bucket; restore drills
//! verify a backup and retention never deletes the newest verified one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use homeplane_backups::store::{S3Config, Store};
use homeplane_testkit::{
    Cluster, Operator, Postgres, S3Server, TestNamespace, eventually, free_port, suffix,
};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

struct Fixture {
    cluster: &'static Cluster,
    ns: TestNamespace,
    pg: &'static Postgres,
    store: Store,
    dir: PathBuf,
    recipient: String,
}

fn wait_phase(f: &Fixture, name: &str, phase: &str) -> String {
    eventually(
        Duration::from_secs(120),
        &format!("Backup {name} {phase}"),
        || {
            let p = f
                .cluster
                .jsonpath(&f.ns.name, "backup", name, ".status.phase");
            if p == "Succeeded" || p == "Failed" {
                let message = f.cluster.jsonpath(
                    &f.ns.name,
                    "backup",
                    name,
                    ".status.conditions[?(@.type==\"Ready\")].message",
                );
                assert_eq!(p, phase, "Backup {name}: {message}");
                return Ok(Some(message));
            }
            Ok(None)
        },
    )
    .unwrap()
}

/// Waits for Backup `name` to fail with `reason`; its message.
fn failed_with(f: &Fixture, name: &str, reason: &str) -> String {
    let message = wait_phase(f, name, "Failed");
    let found = f.cluster.jsonpath(
        &f.ns.name,
        "backup",
        name,
        ".status.conditions[?(@.type==\"Ready\")].reason",
    );
    assert_eq!(found, reason, "{message}");
    message
}

fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn fixture(prefix: &str) -> Fixture {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, prefix).unwrap();
    let pg = Postgres::shared();
    let s3 = S3Server::shared();
    let bucket = S3Server::bucket_name(prefix);
    let store = Store::new(&S3Config {
        endpoint: s3.endpoint.clone(),
        bucket: bucket.clone(),
        region: "auto".into(),
        path_style: true,
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
    });
    store.ensure_bucket().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hp-{prefix}-{}", suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let recipient = keygen(&dir, "key.txt");
    for (name, secret) in [
        ("r2", s3.secret_access_key.as_str()),
        ("r2-revoked", "revoked-secret"),
    ] {
        cluster
            .kubectl_ok(&[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                &ns.name,
                &format!("--from-literal=accessKeyId={}", s3.access_key_id),
                &format!("--from-literal=secretAccessKey={secret}"),
            ])
            .unwrap();
    }
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            &ns.name,
            &format!("--from-literal=username={}", pg.user),
            &format!("--from-literal=password={}", pg.password),
        ])
        .unwrap();
    Fixture {
        cluster,
        ns,
        pg,
        store,
        dir,
        recipient,
    }
}

/// A source database with rows in two schemas.
fn source_db(pg: &Postgres, rows: i64) -> String {
    let db = format!("bk_src_{}", suffix());
    pg.admin("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    pg.admin(
        &db,
        &format!(
            "CREATE SCHEMA clinical; CREATE TABLE clinical.notes (id bigint PRIMARY KEY, body text NOT NULL);
             CREATE TABLE messages (id bigserial PRIMARY KEY, platform text, body text);
             INSERT INTO clinical.notes SELECT g, 'note ' || g FROM generate_series(1, 300) g;
             INSERT INTO messages (platform, body) SELECT 'p' || (g % 6), md5(g::text) FROM generate_series(1, {rows}) g;"
        ),
    )
    .unwrap();
    db
}

fn fingerprint(pg: &Postgres, db: &str) -> String {
    pg.admin(
        db,
        "SELECT (SELECT count(*) || ':' || sum(hashtext(body)) FROM messages) || '/' || (SELECT count(*) || ':' || sum(hashtext(body)) FROM clinical.notes)",
    )
    .unwrap()
}

fn database_yaml(f: &Fixture, name: &str, db: &str) -> String {
    format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: {name}}}\nspec:\n  databaseName: {db}\n  server: {{external: {{host: \"{}\", port: {}, adminSecret: pg-admin, sslMode: disable}}}}\n",
        f.pg.host, f.pg.port
    )
}

fn policy_yaml(f: &Fixture, name: &str, endpoint: &str, secret: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: {name}}}
spec:
  schedule: "0 3 1 1 *"
  source: {{database: {{name: homelab}}}}
  destination: {{endpoint: "{endpoint}", bucket: {bucket}, prefix: homelab/{name}, credentialsSecret: {secret}, partSizeMiB: 5}}
  recipients: ["{recipient}"]
{extra}"#,
        bucket = f.store.bucket(),
        recipient = f.recipient
    )
}

fn create_backup(f: &Fixture, name: &str, policy: &str) {
    let yaml = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Backup\nmetadata: {{name: {name}}}\nspec: {{policy: {policy}}}\n"
    );
    let out = f
        .cluster
        .kubectl_stdin(&["create", "-n", &f.ns.name, "-f", "-"], Some(&yaml))
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn homeplane(f: &Fixture, args: &[&str]) -> (bool, String) {
    let out = Command::new(BINARY)
        .args(args)
        .env("KUBECONFIG", &f.cluster.kubeconfig)
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn object(store: &Store, key: &str) -> Vec<u8> {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_decrypts_with_age_and_restores_the_same_rows_and_failures_are_clear() {
    let f = fixture("backup").await;
    let ns = f.ns.name.clone();
    let src = source_db(f.pg, 20_000);
    let s3 = S3Server::shared();
    for yaml in [
        database_yaml(&f, "homelab", &src),
        policy_yaml(&f, "postgres", &s3.endpoint, "r2", ""),
        policy_yaml(&f, "revoked", &s3.endpoint, "r2-revoked", ""),
        policy_yaml(
            &f,
            "offline",
            &format!("http://127.0.0.1:{}", free_port().unwrap()),
            "r2",
            "",
        ),
    ] {
        let (ok, text) = f.cluster.apply(&ns, &yaml).unwrap();
        assert!(ok, "{text}");
    }

    // A run that was Running when the operator died, with a half-made upload.
    let ghost_key = "homelab/postgres/ghost.pgdump.zst.age";
    create_backup(&f, "ghost", "postgres");
    let patch = format!(r#"{{"status": {{"phase": "Running", "objectKey": "{ghost_key}"}}}}"#);
    f.cluster
        .kubectl_ok(&[
            "patch",
            "backup",
            "ghost",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .unwrap();
    f.store
        .client()
        .create_multipart_upload()
        .bucket(f.store.bucket())
        .key(format!("{ghost_key}.partial"))
        .send()
        .await
        .unwrap();

    // History goes to homeplane's own database.
    let history = format!("bk_history_{}", suffix());
    f.pg.admin("postgres", &format!("CREATE DATABASE {history}"))
        .unwrap();
    let history_url = f.pg.uri(&f.pg.user, &f.pg.password, &history);
    let operator = Operator::start(
        BINARY,
        f.cluster,
        &ns,
        &ns,
        &["--history-database-url", &history_url],
    )
    .unwrap();
    let message = wait_phase(&f, "ghost", "Failed");
    assert_eq!(
        f.cluster.jsonpath(
            &ns,
            "backup",
            "ghost",
            ".status.conditions[?(@.type==\"Ready\")].reason"
        ),
        "Interrupted"
    );
    assert!(
        message.contains("interrupted") && message.contains("was removed"),
        "{message}"
    );
    assert!(
        f.store.open_uploads(ghost_key).await.unwrap().is_empty(),
        "the interrupted upload was not aborted"
    );

    // Back up now.
    create_backup(&f, "now", "postgres");
    let message = wait_phase(&f, "now", "Succeeded");
    assert!(message.contains("size and SHA-256 checked"), "{message}");
    let key = f
        .cluster
        .jsonpath(&ns, "backup", "now", ".status.objectKey");
    let sha = f.cluster.jsonpath(&ns, "backup", "now", ".status.sha256");
    assert!(
        key.starts_with("homelab/postgres/") && key.ends_with("-now.pgdump.zst.age"),
        "{key}"
    );
    assert_eq!(sha.len(), 64);
    let listing = f
        .cluster
        .kubectl_ok(&["get", "backups", "-n", &ns])
        .unwrap();
    assert!(
        listing.contains("now") && listing.contains("Succeeded") && listing.contains("KiB"),
        "{listing}"
    );
    let recorded = f
        .pg
        .admin(&history, "SELECT phase || ' ' || sha256 || ' ' || encrypted_bytes FROM backup_runs WHERE name = 'now'")
        .unwrap();
    let bytes = object(&f.store, &key).await;
    assert_eq!(recorded, format!("Succeeded {sha} {}", bytes.len()));
    assert_eq!(
        f.pg.admin(
            &history,
            "SELECT phase || ' ' || reason FROM backup_runs WHERE name = 'ghost'"
        )
        .unwrap(),
        "Failed Interrupted"
    );
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha);
    assert!(
        f.store
            .head(&format!("{key}.manifest.json"))
            .await
            .unwrap()
            .is_some()
    );

    // The age CLI decrypts it; pg_restore reads the dump.
    std::fs::write(f.dir.join("b.age"), &bytes).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("age -d -i key.txt b.age | zstd -d -c > b.dump && pg_restore -l b.dump")
        .current_dir(&f.dir)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("TABLE clinical notes") && listing.contains("TABLE DATA public messages"),
        "{listing}"
    );

    // homeplane restore gives back the same rows.
    let target = format!("bk_dst_{}", suffix());
    f.pg.admin("postgres", &format!("CREATE DATABASE {target}"))
        .unwrap();
    let into = f.pg.uri(&f.pg.user, &f.pg.password, &target);
    let identity = f.dir.join("key.txt");
    let (ok, text) = homeplane(
        &f,
        &[
            "restore",
            "--backup",
            "now",
            "-n",
            &ns,
            "--identity",
            identity.to_str().unwrap(),
            "--into",
            &into,
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("verified"), "{text}");
    assert_eq!(fingerprint(f.pg, &target), fingerprint(f.pg, &src));

    // A wrong identity fails clearly and changes nothing.
    keygen(&f.dir, "other.txt");
    let empty = format!("bk_none_{}", suffix());
    f.pg.admin("postgres", &format!("CREATE DATABASE {empty}"))
        .unwrap();
    let other = f.dir.join("other.txt");
    let (ok, text) = homeplane(
        &f,
        &[
            "restore",
            "--backup",
            "now",
            "-n",
            &ns,
            "--identity",
            other.to_str().unwrap(),
            "--into",
            &f.pg.uri(&f.pg.user, &f.pg.password, &empty),
        ],
    );
    assert!(
        !ok && text.contains("none of the given age identities"),
        "{text}"
    );
    assert_eq!(
        f.pg.admin(
            &empty,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .unwrap(),
        "0"
    );

    // `homeplane backup decrypt` by object key, with the bucket from flags.
    let plain = f.dir.join("plain.dump");
    let out = Command::new(BINARY)
        .args([
            "backup",
            "decrypt",
            "--object",
            &key,
            "--bucket",
            f.store.bucket(),
            "--endpoint",
            &s3.endpoint,
            "--identity",
            identity.to_str().unwrap(),
            "--out",
            plain.to_str().unwrap(),
        ])
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(f.dir.join("b.dump")).unwrap()
    );

    // Revoked credentials and an unreachable endpoint: Failed, clear, nothing left behind.
    create_backup(&f, "denied", "revoked");
    let message = wait_phase(&f, "denied", "Failed");
    assert!(message.contains("refused the credentials"), "{message}");
    create_backup(&f, "unreachable", "offline");
    let message = wait_phase(&f, "unreachable", "Failed");
    assert!(message.contains("could not be reached"), "{message}");
    for prefix in [
        "homelab/revoked/",
        "homelab/offline/",
        "homelab/postgres/ghost",
    ] {
        assert!(
            f.store.list(prefix).await.unwrap().is_empty(),
            "objects left under {prefix}"
        );
        assert!(
            f.store.open_uploads(prefix).await.unwrap().is_empty(),
            "uploads left under {prefix}"
        );
    }
    let series =
        format!("homeplane_backup_last_size_bytes{{namespace=\"{ns}\",policy=\"postgres\"}}");
    let size = eventually(Duration::from_secs(30), "the size metric", || {
        Ok(operator.metric(&series).filter(|v| *v > 0.0))
    })
    .unwrap();
    assert_eq!(size as usize, bytes.len());
    let failures = format!(
        "homeplane_backup_failures_total{{namespace=\"{ns}\",policy=\"revoked\",reason=\"CredentialsRefused\"}}"
    );
    assert_eq!(
        operator.metric(&failures),
        Some(1.0),
        "{}",
        operator.get("/metrics").unwrap().1
    );
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_drills_verify_and_retention_keeps_the_newest_verified() {
    let f = fixture("drill").await;
    let ns = f.ns.name.clone();
    let src = source_db(f.pg, 500);
    let scratch = format!("bk_scratch_{}", suffix());
    let s3 = S3Server::shared();
    let identity = std::fs::read_to_string(f.dir.join("key.txt")).unwrap();
    f.cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "drill-key",
            "-n",
            &ns,
            &format!("--from-literal=identity={identity}"),
        ])
        .unwrap();
    let verify = "  retention: {keepLast: 1, minAge: 0s}\n  verify:\n    schedule: \"* * * * *\"\n    identitySecret: drill-key\n    scratchDatabase: scratch\n    queries:\n    - {name: messages, sql: \"SELECT count(*) FROM messages\", min: 500}\n    - {name: notes, sql: \"SELECT count(*) FROM clinical.notes;\", min: 1}\n";
    for yaml in [
        database_yaml(&f, "homelab", &src),
        database_yaml(&f, "scratch", &scratch),
        policy_yaml(&f, "postgres", &s3.endpoint, "r2", verify),
    ] {
        let (ok, text) = f.cluster.apply(&ns, &yaml).unwrap();
        assert!(ok, "{text}");
    }
    let _operator = Operator::start(BINARY, f.cluster, &ns, &ns, &[]).unwrap();
    create_backup(&f, "first", "postgres");
    wait_phase(&f, "first", "Succeeded");
    // A drill replaces the scratch database's contents: one not labelled as scratch is refused.
    let verified = |field: &str| {
        f.cluster.jsonpath(
            &ns,
            "backuppolicy",
            "postgres",
            &format!(".status.conditions[?(@.type==\"Verified\")].{field}"),
        )
    };
    eventually(
        Duration::from_secs(90),
        "the drill to refuse the scratch",
        || Ok((verified("reason") == "ScratchNotMarked").then_some(())),
    )
    .unwrap();
    assert!(
        verified("message").contains("homeplane.dev/scratch=true"),
        "{}",
        verified("message")
    );
    assert_eq!(
        f.pg.admin(
            &scratch,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .unwrap(),
        "0",
        "nothing was restored into an unmarked database"
    );
    f.cluster
        .kubectl_ok(&[
            "label",
            "database",
            "scratch",
            "-n",
            &ns,
            "homeplane.dev/scratch=true",
        ])
        .unwrap();
    eventually(
        Duration::from_secs(150),
        "the drill to verify the first backup",
        || {
            Ok((f
                .cluster
                .jsonpath(&ns, "backup", "first", ".status.verified")
                == "true")
                .then_some(()))
        },
    )
    .unwrap();
    let checks = f.cluster.jsonpath(&ns, "backup", "first", ".status.checks");
    assert!(
        checks.contains("\"value\":500") && checks.contains("\"passed\":true"),
        "{checks}"
    );
    assert_eq!(
        f.cluster.jsonpath(
            &ns,
            "backuppolicy",
            "postgres",
            ".status.conditions[?(@.type==\"Verified\")].status"
        ),
        "True"
    );
    assert_eq!(
        fingerprint(f.pg, &scratch),
        fingerprint(f.pg, &src),
        "the drill restored other rows"
    );

    // No more drills; two more backups. keepLast 1 keeps the third, and the newest verified
    // (the first) is never deleted: only the second goes, with its object.
    f.cluster
        .kubectl_ok(&[
            "patch",
            "backuppolicy",
            "postgres",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/verify"}]"#,
        ])
        .unwrap();
    create_backup(&f, "second", "postgres");
    wait_phase(&f, "second", "Succeeded");
    let second_key = f
        .cluster
        .jsonpath(&ns, "backup", "second", ".status.objectKey");
    create_backup(&f, "third", "postgres");
    wait_phase(&f, "third", "Succeeded");
    eventually(
        Duration::from_secs(60),
        "retention to delete the second backup",
        || {
            let out = f.cluster.kubectl(&["get", "backup", "second", "-n", &ns])?;
            Ok((!out.status.success()).then_some(()))
        },
    )
    .unwrap();
    assert!(
        f.store.head(&second_key).await.unwrap().is_none(),
        "the second backup's object is still there"
    );
    for kept in ["first", "third"] {
        let key = f.cluster.jsonpath(&ns, "backup", kept, ".status.objectKey");
        assert!(
            f.store.head(&key).await.unwrap().is_some(),
            "{kept} lost its object"
        );
    }
    std::fs::remove_dir_all(&f.dir).unwrap();
}

/// A claim bound to a statically provisioned hostPath volume (the real PV controller binds
/// them); returns the volume's name, to delete it at the end (volumes are cluster-scoped).
fn claim(f: &Fixture, name: &str, mode: &str) -> String {
    let pv = format!("{}-{name}", f.ns.name);
    let yaml = format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [{mode}]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath: {{path: /var/lib/homeplane-test/{pv}}}
  claimRef: {{namespace: {ns}, name: {name}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}}}
spec:
  storageClassName: manual
  volumeName: {pv}
  accessModes: [{mode}]
  resources: {{requests: {{storage: 1Gi}}}}
"#,
        ns = f.ns.name
    );
    let (ok, text) = f.cluster.apply(&f.ns.name, &yaml).unwrap();
    assert!(ok, "{text}");
    eventually(Duration::from_secs(60), "the claim Bound", || {
        Ok((f.cluster.jsonpath(&f.ns.name, "pvc", name, ".status.phase") == "Bound").then_some(()))
    })
    .unwrap();
    pv
}

/// A tree like an app's data volume: nested folders, a big file, an executable, a symlink.
fn volume_tree(root: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir_all(root.join("database/wal")).unwrap();
    std::fs::create_dir_all(root.join("nodes/custom")).unwrap();
    std::fs::write(root.join("config"), b"{\"encryptionKey\":\"demo\"}").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("database/database.sqlite"), big).unwrap();
    std::fs::write(root.join("database/wal/0001"), b"wal").unwrap();
    std::fs::write(root.join("nodes/custom/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("nodes/custom/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("database/database.sqlite", root.join("current.sqlite")).unwrap();
}

/// Every entry of a tree: path, kind, mode, size and a content hash (links: their target).
fn tree_listing(root: &Path) -> Vec<String> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            out.push(if meta.file_type().is_symlink() {
                format!("{rel} -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("{rel}/ {mode:o}")
            } else {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "{rel} {mode:o} {} {}",
                    data.len(),
                    hex::encode(sha2::Sha256::digest(&data))
                )
            });
        }
    }
    out.sort();
    out
}

/// Runs on this machine what the backup Job's container runs: the pod's own arguments and
/// environment (Secret references resolved the way the kubelet would), with the claim's mount
/// replaced by `data` and the termination-message path by a file. Returns the exit code and
/// the result the container would leave as its termination message.
fn play_backup_pod(f: &Fixture, pod: &serde_json::Value, data: &Path) -> (i32, String) {
    let container = &pod["spec"]["containers"][0];
    let result = f.dir.join(format!(
        "result-{}.json",
        pod["metadata"]["name"].as_str().unwrap()
    ));
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for a in args.iter_mut() {
        if a == "/data" {
            *a = data.display().to_string();
        } else if a == "/dev/termination-log" {
            *a = result.display().to_string();
        }
    }
    let mut cmd = Command::new(BINARY);
    cmd.args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                let r = &e["valueFrom"]["secretKeyRef"];
                f.cluster
                    .secret_value(
                        &f.ns.name,
                        r["name"].as_str().unwrap(),
                        r["key"].as_str().unwrap(),
                    )
                    .unwrap()
            }
        };
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    let message = std::fs::read_to_string(&result).unwrap_or_default();
    (out.status.code().unwrap_or(-1), message)
}

fn pvc_policy_yaml(f: &Fixture, name: &str, claim: &str) -> String {
    format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: BackupPolicy
metadata: {{name: {name}}}
spec:
  schedule: "0 3 1 1 *"
  source: {{pvc: {{claimName: {claim}}}}}
  destination: {{endpoint: "{endpoint}", bucket: {bucket}, prefix: homelab/{name}, credentialsSecret: r2, partSizeMiB: 5}}
  recipients: ["{recipient}"]
"#,
        endpoint = S3Server::shared().endpoint,
        bucket = f.store.bucket(),
        recipient = f.recipient
    )
}

/// The Running pod of a Backup's Job, after checking the Backup says it runs that Job.
fn backup_pod(f: &Fixture, backup: &str) -> serde_json::Value {
    let job = eventually(Duration::from_secs(60), "the Backup's Job", || {
        let j = f
            .cluster
            .jsonpath(&f.ns.name, "backup", backup, ".status.job");
        Ok((!j.is_empty()).then_some(j))
    })
    .unwrap();
    assert_eq!(
        f.cluster
            .jsonpath(&f.ns.name, "backup", backup, ".status.phase"),
        "Running"
    );
    f.cluster
        .running_job_pod(&f.ns.name, &job, Duration::from_secs(60))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_is_archived_by_a_job_restores_file_for_file_and_is_checked_in_the_bucket() {
    let f = fixture("bkpvc").await;
    let ns = f.ns.name.clone();
    let pv = claim(&f, "n8n-data", "ReadWriteOnce");
    let exclusive_pv = claim(&f, "vault-data", "ReadWriteOncePod");
    // The apps that use the claims run on pi-1; n8n with a toleration the Job must copy.
    let app = |name: &str, claim: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: pi-1}}
  tolerations: [{{key: example.com/quiet-hours, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: app
    image: example/{name}:1
    resources: {{limits: {{cpu: 10m, memory: 16Mi}}}}
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]
"#
        )
    };
    for yaml in [
        app("n8n", "n8n-data"),
        app("vault", "vault-data"),
        pvc_policy_yaml(&f, "n8n-data", "n8n-data"),
        pvc_policy_yaml(&f, "nowhere", "no-such-claim"),
        pvc_policy_yaml(&f, "vault", "vault-data"),
    ] {
        let (ok, text) = f.cluster.apply(&ns, &yaml).unwrap();
        assert!(ok, "{text}");
    }
    for pod in ["n8n", "vault"] {
        eventually(Duration::from_secs(60), &format!("{pod} Running"), || {
            Ok((f.cluster.jsonpath(&ns, "pod", pod, ".status.phase") == "Running").then_some(()))
        })
        .unwrap();
    }
    let _operator = Operator::start(
        BINARY,
        f.cluster,
        &ns,
        &ns,
        &["--image", "registry.test/homeplane:test"],
    )
    .unwrap();
    let data = f.dir.join("volume");
    volume_tree(&data);

    // A policy whose claim does not exist says so before any run; one whose claim and
    // credentials are there is Scheduled.
    let ready = |policy: &str| {
        let path = ".status.conditions[?(@.type==\"Ready\")]";
        (
            f.cluster
                .jsonpath(&ns, "backuppolicy", policy, &format!("{path}.reason")),
            f.cluster
                .jsonpath(&ns, "backuppolicy", policy, &format!("{path}.message")),
        )
    };
    let mut last = Default::default();
    eventually(
        Duration::from_secs(60),
        "the policies' Ready conditions",
        || {
            last = (ready("nowhere"), ready("n8n-data"));
            let ((reason, message), (fine, _)) = &last;
            Ok((reason == "SourceNotFound"
                && message.contains("no-such-claim")
                && fine == "Scheduled")
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last {last:?}"));

    // A claim that does not exist: refused at once, no Job.
    create_backup(&f, "nowhere-1", "nowhere");
    let message = failed_with(&f, "nowhere-1", "SourceNotFound");
    assert!(
        message.contains("PersistentVolumeClaim") && message.contains("no-such-claim"),
        "{message}"
    );

    // A ReadWriteOncePod claim in use cannot be mounted by a second pod: said at once.
    create_backup(&f, "vault-1", "vault");
    let message = failed_with(&f, "vault-1", "ClaimInUse");
    assert!(message.contains("pod vault uses it"), "{message}");

    // The run: a Job on the app's node, with its toleration, the claim read-only, the
    // operator's image, limits; the container's own command line archives the volume.
    create_backup(&f, "n8n-data-1", "n8n-data");
    let pod = backup_pod(&f, "n8n-data-1");
    assert_eq!(pod["spec"]["nodeName"], "pi-1");
    let spec = &pod["spec"];
    assert!(
        spec["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "example.com/quiet-hours"),
        "{spec}"
    );
    assert_eq!(
        spec["containers"][0]["image"],
        "registry.test/homeplane:test"
    );
    assert_eq!(
        spec["volumes"][0]["persistentVolumeClaim"]["readOnly"],
        true
    );
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["memory"],
        "138Mi"
    );
    let (code, result) = play_backup_pod(&f, &pod, &data);
    assert_eq!(code, 0, "{result}");
    f.cluster
        .end_pod(&ns, &pod, 0, "Completed", &result)
        .unwrap();
    let message = wait_phase(&f, "n8n-data-1", "Succeeded");
    assert!(
        message.contains("size and SHA-256 checked")
            && message.contains("4 files, 4 directories, 1 symbolic links"),
        "{message}"
    );
    assert_eq!(
        f.cluster
            .jsonpath(&ns, "backup", "n8n-data-1", ".status.archive.files"),
        "4"
    );
    let key = f
        .cluster
        .jsonpath(&ns, "backup", "n8n-data-1", ".status.objectKey");
    assert!(key.ends_with("-n8n-data-1.tar.zst.age"), "{key}");

    // Restore drills of a volume read its whole archive back (checked at the end); a
    // database-style drill is refused by the API server for a volume.
    let identity = f.dir.join("key.txt").display().to_string();
    f.cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "drill-key",
            "-n",
            &ns,
            &format!("--from-file=identity={identity}"),
        ])
        .unwrap();
    let drill = "  verify: {schedule: \"* * * * *\", identitySecret: drill-key, minFiles: 3}\n";
    let (ok, text) = f
        .cluster
        .apply(&ns, &(pvc_policy_yaml(&f, "n8n-data", "n8n-data") + drill))
        .unwrap();
    assert!(ok, "{text}");
    let wrong = "  verify: {schedule: \"* * * * *\", identitySecret: drill-key, scratchDatabase: scratch}\n";
    let (ok, text) = f
        .cluster
        .apply(&ns, &(pvc_policy_yaml(&f, "n8n-data", "n8n-data") + wrong))
        .unwrap();
    assert!(
        !ok && text.contains("reads the whole archive back"),
        "{text}"
    );

    // The object is a standard age file of a standard zstd'd tar: the age CLI, zstd and GNU
    // tar unpack it, file for file.
    let encrypted = f.dir.join("volume.tar.zst.age");
    std::fs::write(&encrypted, object(&f.store, &key).await).unwrap();
    let by_tar = f.dir.join("by-tar");
    std::fs::create_dir_all(&by_tar).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "age -d -i '{key_file}' '{encrypted}' | zstd -d | tar -xpf - -C '{by_tar}'",
            key_file = f.dir.join("key.txt").display(),
            encrypted = encrypted.display(),
            by_tar = by_tar.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree_listing(&by_tar), tree_listing(&data));

    // `homeplane restore --into-dir` gives the same tree, and refuses a directory in use.
    let restored = f.dir.join("restored");
    let restored_arg = restored.display().to_string();
    let args = [
        "restore",
        "--backup",
        "n8n-data-1",
        "-n",
        &ns,
        "--identity",
        &identity,
        "--into-dir",
        &restored_arg,
    ];
    let (ok, text) = homeplane(&f, &args);
    assert!(ok, "{text}");
    assert!(text.contains("4 files"), "{text}");
    assert_eq!(tree_listing(&restored), tree_listing(&data));
    let (ok, text) = homeplane(&f, &args);
    assert!(!ok && text.contains("is not empty"), "{text}");

    // A container that says it succeeded but never uploaded: the bucket is the judge.
    create_backup(&f, "n8n-data-2", "n8n-data");
    let pod = backup_pod(&f, "n8n-data-2");
    let key2 = f
        .cluster
        .jsonpath(&ns, "backup", "n8n-data-2", ".status.objectKey");
    let lie = format!(r#"{{"objectKey":"{key2}","sha256":"00","encryptedBytes":1}}"#);
    f.cluster.end_pod(&ns, &pod, 0, "Completed", &lie).unwrap();
    let message = failed_with(&f, "n8n-data-2", "NotUploaded");
    assert!(
        message.contains("does not check out") && message.contains("no manifest"),
        "{message}"
    );

    // The volume cannot be read: the container's own failure, in its words.
    create_backup(&f, "n8n-data-3", "n8n-data");
    let pod = backup_pod(&f, "n8n-data-3");
    let (code, result) = play_backup_pod(&f, &pod, &f.dir.join("not-mounted"));
    assert_ne!(code, 0);
    f.cluster
        .end_pod(&ns, &pod, code, "Error", &result)
        .unwrap();
    let message = failed_with(&f, "n8n-data-3", "SourceFailed");
    assert!(
        message.contains("not-mounted") && message.contains("cannot be read"),
        "{message}"
    );

    // Killed for memory midway, after uploading part of the archive: said so, and what it
    // uploaded is removed.
    create_backup(&f, "n8n-data-4", "n8n-data");
    let pod = backup_pod(&f, "n8n-data-4");
    let key4 = f
        .cluster
        .jsonpath(&ns, "backup", "n8n-data-4", ".status.objectKey");
    f.store
        .client()
        .create_multipart_upload()
        .bucket(f.store.bucket())
        .key(format!("{key4}.partial"))
        .send()
        .await
        .unwrap();
    f.cluster.end_pod(&ns, &pod, 137, "OOMKilled", "").unwrap();
    let message = wait_phase(&f, "n8n-data-4", "Failed");
    assert!(
        message.contains("ran out of memory (limit 138 MiB)"),
        "{message}"
    );
    assert!(
        message.contains("What it had uploaded was removed"),
        "{message}"
    );

    // Only the good backup is in the bucket, and nothing is left half-made.
    let mut keys = f.store.list("").await.unwrap();
    keys.sort();
    assert_eq!(keys, vec![key.clone(), format!("{key}.manifest.json")]);
    assert!(f.store.open_uploads("").await.unwrap().is_empty());

    // The drill read the archive of the newest good backup: 4 files, at least 3 wanted.
    let verified = eventually(Duration::from_secs(90), "n8n-data-1 verified", || {
        let v = f
            .cluster
            .jsonpath(&ns, "backup", "n8n-data-1", ".status.verified");
        Ok((v == "true").then_some(()))
    });
    let policy_status = f
        .cluster
        .jsonpath(&ns, "backuppolicy", "n8n-data", ".status");
    verified.unwrap_or_else(|e| panic!("{e}; policy status {policy_status}"));
    assert_eq!(
        f.cluster
            .jsonpath(&ns, "backup", "n8n-data-1", ".status.checks[0].value"),
        "4"
    );

    f.cluster
        .kubectl_ok(&["delete", "pod", "n8n", "vault", "-n", &ns, "--wait=false"])
        .unwrap();
    for volume in [&pv, &exclusive_pv] {
        f.cluster
            .kubectl_ok(&["delete", "pv", volume, "--wait=false"])
            .unwrap();
    }
}
