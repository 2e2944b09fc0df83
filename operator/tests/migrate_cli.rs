//! `homeplane migrate` against a real PostgreSQL: order, idempotence, dry runs, rollback with
//! down files, all-or-nothing transactions, baselines and adopting sqlx's history.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use homeplane_testkit::{Postgres, suffix};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

struct Scratch {
    pg: &'static Postgres,
    db: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(files: &[(&str, &str)]) -> Scratch {
        let pg = Postgres::shared();
        let db = format!("hp_cli_{}", suffix());
        pg.admin("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        let dir = std::env::temp_dir().join(&db);
        std::fs::create_dir_all(&dir).unwrap();
        let scratch = Scratch { pg, db, dir };
        for (name, sql) in files {
            scratch.write(name, sql);
        }
        scratch
    }

    fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.dir.join(name), sql).unwrap();
    }

    fn migrate(&self, extra: &[&str]) -> (bool, String) {
        let url = self.pg.uri(&self.pg.user, &self.pg.password, &self.db);
        let out = Command::new(BINARY)
            .args(["migrate", "--dir", &self.dir.to_string_lossy()])
            .args(extra)
            .env("DATABASE_URL", url)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.admin(&self.db, sql).unwrap()
    }
}

fn exists(dir: &Path) -> bool {
    dir.exists()
}

#[test]
fn applies_in_order_once_and_dry_runs_change_nothing() {
    let s = Scratch::new(&[
        ("0002_insert.sql", "INSERT INTO items VALUES (2);"),
        ("0001_create.sql", "CREATE TABLE items (id int);"),
    ]);
    assert!(exists(&s.dir));
    let (ok, out) = s.migrate(&["--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("would apply 0001_create\nwould apply 0002_insert"),
        "{out}"
    );
    assert_eq!(
        s.sql("SELECT to_regclass('items') IS NULL"),
        "t",
        "a dry run changes nothing"
    );
    let (ok, out) = s.migrate(&[]);
    assert!(
        ok && out.contains(
            "applied 0001_create\napplied 0002_insert\n2 applied, 0 pending, last 0002_insert"
        ),
        "{out}"
    );
    let (ok, out) = s.migrate(&[]);
    assert!(
        ok && out.trim() == "2 applied, 0 pending, last 0002_insert",
        "a re-run is a no-op: {out}"
    );
    let history = s.sql("SELECT string_agg(version || ':' || description || ':' || length(checksum), ',' ORDER BY version) FROM schema_migrations");
    assert_eq!(history, "1:create:64,2:insert:64");
}

#[test]
fn rolls_back_with_down_files_and_refuses_without_them() {
    let s = Scratch::new(&[
        ("0001_a.sql", "CREATE TABLE a (id int);"),
        ("0001_a.down.sql", "DROP TABLE a;"),
        ("0002_b.sql", "CREATE TABLE b (id int);"),
        ("0002_b.down.sql", "DROP TABLE b;"),
        ("0003_c.sql", "CREATE TABLE c (id int);"),
    ]);
    assert!(s.migrate(&[]).0);
    let (ok, out) = s.migrate(&["--target", "1"]);
    assert!(
        !ok && out.contains("cannot roll back to version 1: 0003_c has no down file"),
        "{out}"
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM schema_migrations"),
        "3",
        "nothing was rolled back"
    );
    s.write("0003_c.down.sql", "DROP TABLE c;");
    let (ok, out) = s.migrate(&["--target", "1"]);
    assert!(
        ok && out
            .contains("rolled back 0003_c\nrolled back 0002_b\n1 applied, 0 pending, last 0001_a"),
        "{out}"
    );
    assert_eq!(
        s.sql(
            "SELECT to_regclass('b') IS NULL, to_regclass('c') IS NULL, to_regclass('a') IS NULL"
        ),
        "t|t|f"
    );
    let (ok, out) = s.migrate(&[]);
    assert!(ok && out.contains("3 applied"), "forward again: {out}");
}

#[test]
fn one_transaction_for_all_is_all_or_nothing() {
    let s = Scratch::new(&[
        ("0001_ok.sql", "CREATE TABLE ok1 (id int);"),
        (
            "0002_bad.sql",
            "CREATE TABLE ok2 (id int); SELECT * FROM missing_table;",
        ),
    ]);
    let (ok, out) = s.migrate(&["--single-transaction"]);
    assert!(
        !ok && out.contains("migration 0002_bad failed and was rolled back")
            && out.contains("missing_table"),
        "{out}"
    );
    assert_eq!(
        s.sql("SELECT to_regclass('ok1') IS NULL, count(*) FROM schema_migrations"),
        "t|0"
    );
    // One transaction per migration (the default) keeps the good one.
    let (ok, _) = s.migrate(&[]);
    assert!(!ok);
    assert_eq!(s.sql("SELECT to_regclass('ok1') IS NULL, to_regclass('ok2') IS NULL, count(*) FROM schema_migrations"), "f|t|1");
}

#[test]
fn a_changed_file_is_refused_unless_accepted() {
    let s = Scratch::new(&[("0001_a.sql", "CREATE TABLE a (id int);")]);
    assert!(s.migrate(&[]).0);
    s.write("0001_a.sql", "CREATE TABLE a (id bigint);");
    let (ok, out) = s.migrate(&[]);
    assert!(
        !ok && out.contains("migration 0001_a was applied with checksum"),
        "{out}"
    );
    let (ok, out) = s.migrate(&["--accept-changed", "0001_a"]);
    assert!(ok, "{out}");
    assert!(s.migrate(&[]).0, "the new checksum is recorded");
}

#[test]
fn adopts_sqlx_history_and_baselines() {
    // A database that sqlx migrated: its history says 1 and 2 are applied.
    let s = Scratch::new(&[
        ("0001_a.sql", "CREATE TABLE a (id int);"),
        ("0002_b.sql", "CREATE TABLE b (id int);"),
        ("0003_c.sql", "CREATE TABLE c (id int);"),
    ]);
    s.sql("CREATE TABLE a (id int); CREATE TABLE b (id int);
           CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL, installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, checksum bytea NOT NULL, execution_time bigint NOT NULL);
           INSERT INTO _sqlx_migrations VALUES (1, 'a', now(), true, '\\x00', 1), (2, 'b', now(), true, '\\x00', 1);");
    let (ok, out) = s.migrate(&["--adopt", "_sqlx_migrations"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("recorded 0001_a")
            && out.contains("recorded 0002_b")
            && out.contains("applied 0003_c"),
        "{out}"
    );
    assert_eq!(s.sql("SELECT count(*) FROM schema_migrations"), "3");

    // A hand-made schema: everything up to 2 exists already.
    let hand = Scratch::new(&[
        ("0001_a.sql", "CREATE TABLE a (id int);"),
        ("0002_b.sql", "CREATE TABLE b (id int);"),
        ("0003_c.sql", "CREATE TABLE c (id int);"),
    ]);
    hand.sql("CREATE TABLE a (id int); CREATE TABLE b (id int);");
    let (ok, out) = hand.migrate(&["--baseline", "2"]);
    assert!(ok && out.contains("applied 0003_c"), "{out}");
    assert_eq!(hand.sql("SELECT string_agg(applied_by, ',' ORDER BY version) LIKE 'baseline%,baseline%,homeplane migrate%' FROM schema_migrations"), "t");
}

/// A folder that cannot be read is reported at once, also when the server would hold the
/// connection without answering (a listener on loopback that never speaks), and a refused
/// connection is reported as such.
#[test]
fn a_bad_folder_or_a_server_that_refuses_is_reported_without_waiting_for_the_other() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let missing = std::env::temp_dir().join(format!("hp_cli_missing_{}", suffix()));
    let mut child = Command::new(BINARY)
        .args(["migrate", "--dir", &missing.to_string_lossy()])
        .env(
            "DATABASE_URL",
            format!("postgres://u:p@127.0.0.1:{port}/db"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A run that waited for the silent server would never end: it is stopped after 60 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let ended = child.try_wait().unwrap().is_some();
    if !ended {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        ended,
        "waited on the silent server instead of reporting the folder: {stderr}"
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("failed to read") && stderr.contains("hp_cli_missing_"),
        "{stderr}"
    );
    drop(silent);

    // A server that refuses: the connection's error, after the folder was read.
    let scratch_dir = std::env::temp_dir().join(format!("hp_cli_refused_{}", suffix()));
    std::fs::create_dir_all(&scratch_dir).unwrap();
    std::fs::write(scratch_dir.join("0001_a.sql"), "SELECT 1;").unwrap();
    let out = Command::new(BINARY)
        .args(["migrate", "--dir", &scratch_dir.to_string_lossy()])
        .env(
            "DATABASE_URL",
            format!("postgres://u:p@127.0.0.1:{port}/db"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("failed to connect to --database-url"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&scratch_dir).unwrap();
}
