//! The Database controller against a real PostgreSQL (Debian's, started by the test suite):
//! tiers and roles become exactly the privileges declared — checked with
//! `has_table_privilege` and by connecting as each role — migrations apply once, in order,
//! and a failing one changes nothing; bad input ends in a clear condition.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use homeplane_testkit::{Cluster, Operator, Postgres, TestNamespace, eventually, suffix};

const BINARY: &str = env!("CARGO_BIN_EXE_homeplane");

fn admin_secret(cluster: &Cluster, ns: &str, name: &str, user: &str, password: &str) {
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-literal=username={user}"),
            &format!("--from-literal=password={password}"),
        ])
        .unwrap();
}

fn condition(cluster: &Cluster, ns: &str, name: &str, type_: &str) -> (String, String, String) {
    let get = |field: &str| {
        cluster
            .kubectl_ok(&[
                "get",
                "database",
                name,
                "-n",
                ns,
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
            ])
            .unwrap_or_default()
    };
    (get("status"), get("reason"), get("message"))
}

fn wait_reason(cluster: &Cluster, ns: &str, name: &str, type_: &str, reason: &str) -> String {
    eventually(
        Duration::from_secs(90),
        &format!("{type_} reason {reason}"),
        || {
            let (_, r, message) = condition(cluster, ns, name, type_);
            Ok((r == reason).then_some(message))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; Ready is {:?}", condition(cluster, ns, name, "Ready")))
}

fn secret_field(cluster: &Cluster, ns: &str, secret: &str, key: &str) -> String {
    let encoded = cluster
        .kubectl_ok(&[
            "get",
            "secret",
            secret,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ])
        .unwrap();
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    out.stdin
        .as_ref()
        .unwrap()
        .write_all(encoded.as_bytes())
        .unwrap();
    String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
}

fn touch(cluster: &Cluster, ns: &str, name: &str) {
    cluster
        .kubectl_ok(&[
            "annotate",
            "database",
            name,
            "-n",
            ns,
            "--overwrite",
            &format!("test/touch={}", suffix()),
        ])
        .unwrap();
}

#[test]
fn tiers_and_roles_become_exactly_the_declared_privileges() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-tiers").unwrap();
    let s = suffix();
    let db = format!("hp_tiers_{s}");
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    let spec = format!(
        r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: homelab}}
spec:
  databaseName: {db}
  server: {{external: {{host: "{host}", port: {port}, adminSecret: pg-admin, sslMode: disable}}}}
  extensions: [{{name: pg_trgm}}, {{name: pgcrypto}}]
  tiers:
  - {{name: sacred, description: "clinical records, therapy notes", schemas: [clinical, therapy]}}
  - {{name: sensitive, schemas: [messages, health]}}
  - {{name: convenience, schemas: [public_data]}}
  roles:
  - name: app_{s}
    access: [{{tier: sacred, level: write}}, {{tier: sensitive, level: write}}, {{tier: convenience, level: write}}]
  - name: mcp_proxy_{s}
    access: [{{tier: sensitive, level: read}}, {{tier: convenience, level: read}}]
  - name: readonly_{s}
    access: [{{tier: convenience, level: read}}]
  - name: remote_rw_{s}
    access: [{{tier: convenience, level: write}}]
  - name: migrator_{s}
    login: false
  migrations:
    inline:
    - id: "0001_tables"
      sql: |
        CREATE TABLE clinical.notes (id bigserial PRIMARY KEY, body text NOT NULL);
        CREATE TABLE messages.inbox (id bigserial PRIMARY KEY, body text NOT NULL);
        CREATE TABLE public_data.weather (id bigserial PRIMARY KEY, celsius int NOT NULL);
        INSERT INTO clinical.notes (body) VALUES ('private');
        INSERT INTO public_data.weather (celsius) VALUES (21);
        CREATE FUNCTION clinical.note_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM clinical.notes';
        CREATE FUNCTION public_data.warmest() RETURNS int LANGUAGE sql AS 'SELECT max(celsius) FROM public_data.weather';
"#,
        host = pg.host,
        port = pg.port
    );
    let (ok, text) = cluster.apply(&ns.name, &spec).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let message = wait_reason(cluster, &ns.name, "homelab", "Ready", "Reconciled");
    assert!(
        message.contains("5 role(s), 3 tier(s), 1 migration(s) applied"),
        "{message}"
    );

    // Each login role has a Secret with a working URI; the non-login role has none.
    let password = |role: &str| {
        secret_field(
            cluster,
            &ns.name,
            &format!("homelab-{}", role.replace('_', "-")),
            "password",
        )
    };
    let uri = secret_field(cluster, &ns.name, &format!("homelab-readonly-{s}"), "uri");
    assert!(
        uri.starts_with(&format!("postgres://readonly_{s}:")) && uri.ends_with(&format!("/{db}")),
        "{uri}"
    );
    assert!(
        cluster
            .kubectl(&[
                "get",
                "secret",
                &format!("homelab-migrator-{s}"),
                "-n",
                &ns.name
            ])
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    let as_role = |role: &str, sql: &str| pg.psql_as(role, &password(role), &db, sql).unwrap();

    let readonly = format!("readonly_{s}");
    let mcp = format!("mcp_proxy_{s}");
    let app = format!("app_{s}");
    assert_eq!(
        as_role(&readonly, "SELECT celsius FROM public_data.weather"),
        (true, "21".to_string())
    );
    let (ok, text) = as_role(&readonly, "SELECT body FROM clinical.notes");
    assert!(
        !ok && text.contains("permission denied"),
        "readonly must not read Sacred: {text}"
    );
    let (ok, text) = as_role(
        &readonly,
        "INSERT INTO public_data.weather (celsius) VALUES (1)",
    );
    assert!(
        !ok && text.contains("permission denied"),
        "readonly must not write: {text}"
    );
    let (ok, text) = as_role(&mcp, "SELECT body FROM clinical.notes");
    assert!(
        !ok && text.contains("permission denied"),
        "mcp_proxy must not read Sacred: {text}"
    );
    assert!(as_role(&mcp, "SELECT count(*) FROM messages.inbox").0);
    assert!(
        as_role(
            &app,
            "INSERT INTO clinical.notes (body) VALUES ('from app')"
        )
        .0,
        "app writes Sacred"
    );

    // A Sacred table created after the grants follows its tier.
    pg.admin(&db, "CREATE TABLE therapy.sessions (id int)")
        .unwrap();
    let (ok, text) = as_role(&readonly, "SELECT * FROM therapy.sessions");
    assert!(!ok && text.contains("permission denied"), "{text}");
    let (ok, text) = as_role(&mcp, "SELECT * FROM therapy.sessions");
    assert!(!ok && text.contains("permission denied"), "{text}");
    assert!(
        as_role(&app, "INSERT INTO therapy.sessions VALUES (1)").0,
        "app writes a table created later"
    );
    let privileges = pg
        .admin(&db, &format!(
            "SELECT has_table_privilege('{readonly}', 'clinical.notes', 'SELECT'), has_table_privilege('{mcp}', 'therapy.sessions', 'SELECT'), has_table_privilege('{app}', 'therapy.sessions', 'DELETE'), has_schema_privilege('{readonly}', 'clinical', 'USAGE')"
        ))
        .unwrap();
    assert_eq!(privileges, "f|f|t|f");

    // A privilege granted by hand is revoked on the next reconcile, and reported.
    pg.admin(&db, &format!("GRANT SELECT ON clinical.notes TO {readonly}; GRANT USAGE ON SCHEMA clinical TO {readonly}")).unwrap();
    assert!(
        as_role(&readonly, "SELECT body FROM clinical.notes").0,
        "the hand-made grant works at first"
    );
    touch(cluster, &ns.name, "homelab");
    eventually(
        Duration::from_secs(60),
        "the hand-made grant to be revoked",
        || {
            let allowed = pg.admin(
                &db,
                &format!("SELECT has_table_privilege('{readonly}', 'clinical.notes', 'SELECT')"),
            )?;
            Ok((allowed == "f").then_some(()))
        },
    )
    .unwrap();
    // The status write follows the transaction; wait for it.
    let revoke =
        format!("REVOKE SELECT ON TABLE \\\"clinical\\\".\\\"notes\\\" FROM \\\"{readonly}\\\"");
    eventually(
        Duration::from_secs(30),
        "status.lastPlan to show the REVOKE",
        || {
            let plan = cluster.kubectl_ok(&[
                "get",
                "database",
                "homelab",
                "-n",
                &ns.name,
                "-o",
                "jsonpath={.status.lastPlan}",
            ])?;
            Ok(plan.contains(&revoke).then_some(()))
        },
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "a Warning event about the revoked grant",
        || {
            let events = cluster.kubectl_ok(&[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "reason=UndeclaredPrivilegesRevoked",
            ])?;
            Ok(events
                .contains("revoked what the spec does not declare")
                .then_some(()))
        },
    )
    .unwrap();

    // Functions: PUBLIC's default EXECUTE is revoked in tier schemas; readers may execute.
    let routines = pg
        .admin(&db, &format!(
            "SELECT has_function_privilege('{readonly}', 'clinical.note_count()', 'EXECUTE'), has_function_privilege('{app}', 'clinical.note_count()', 'EXECUTE')"
        ))
        .unwrap();
    assert_eq!(routines, "f|t");
    assert_eq!(
        as_role(&readonly, "SELECT public_data.warmest()"),
        (true, "21".to_string())
    );

    // Rotation: a deleted Secret comes back with a new password, and only that one works.
    let old_password = password(&readonly);
    cluster
        .kubectl_ok(&[
            "delete",
            "secret",
            &format!("homelab-readonly-{s}"),
            "-n",
            &ns.name,
        ])
        .unwrap();
    let new_password = eventually(Duration::from_secs(60), "a new readonly Secret", || {
        let out = cluster.kubectl(&[
            "get",
            "secret",
            &format!("homelab-readonly-{s}"),
            "-n",
            &ns.name,
        ])?;
        Ok(out.status.success().then(|| password(&readonly)))
    })
    .unwrap();
    assert_ne!(new_password, old_password);
    assert!(
        pg.psql_as(&readonly, &new_password, &db, "SELECT 1")
            .unwrap()
            .0
    );
    let (ok, text) = pg
        .psql_as(&readonly, &old_password, &db, "SELECT 1")
        .unwrap();
    assert!(
        !ok && text.contains("password authentication failed"),
        "{text}"
    );

    // A role removed from the spec is retired: no login, no privileges, still there.
    let without = spec.replace(
        &format!("  - name: remote_rw_{s}\n    access: [{{tier: convenience, level: write}}]\n"),
        "",
    );
    assert_ne!(without, spec);
    let (ok, text) = cluster.apply(&ns.name, &without).unwrap();
    assert!(ok, "{text}");
    eventually(Duration::from_secs(60), "remote_rw to be retired", || {
        let state = pg.admin(
            "postgres",
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'remote_rw_{s}'"),
        )?;
        Ok((state == "f").then_some(()))
    })
    .unwrap();
    let left = pg
        .admin(
            &db,
            &format!(
                "SELECT has_table_privilege('remote_rw_{s}', 'public_data.weather', 'INSERT')"
            ),
        )
        .unwrap();
    assert_eq!(left, "f");

    // Extensions, and no password anywhere in status.
    let extensions = pg
        .admin(
            &db,
            "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension",
        )
        .unwrap();
    assert!(
        extensions.contains("pg_trgm") && extensions.contains("pgcrypto"),
        "{extensions}"
    );
    let status = cluster
        .kubectl_ok(&[
            "get",
            "database",
            "homelab",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status}",
        ])
        .unwrap();
    for role in [&readonly, &mcp, &app] {
        assert!(
            !status.contains(&password(role)),
            "a password leaked into status"
        );
    }
}

#[test]
fn migrations_apply_once_in_order_and_a_failure_changes_nothing() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-migrate").unwrap();
    let db = format!("hp_migrate_{}", suffix());
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    // 227 migrations in a ConfigMap, as the seed system has.
    let mut files = String::new();
    for n in 1..=227 {
        files.push_str(&format!("  {n:04}_step_{n}.sql: \"CREATE TABLE t{n:04} (id int); INSERT INTO t{n:04} VALUES ({n});\"\n"));
    }
    let config_map =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: migrations}}\ndata:\n{files}");
    let (ok, text) = cluster.apply(&ns.name, &config_map).unwrap();
    assert!(ok, "{text}");
    let spec = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: history}}\nspec:\n  databaseName: {db}\n  server: {{external: {{host: \"{}\", port: {}, adminSecret: pg-admin, sslMode: disable}}}}\n  migrations: {{configMaps: [migrations]}}\n",
        pg.host, pg.port
    );
    let (ok, text) = cluster.apply(&ns.name, &spec).unwrap();
    assert!(ok, "{text}");
    // Two replicas racing (each thinks it leads: separate leases) never apply one twice.
    let lease_b = TestNamespace::new(cluster, "db-migrate-b").unwrap();
    let _a = Operator::start(BINARY, cluster, &ns.name, &format!("{}-a", ns.name), &[]).unwrap();
    let _b = Operator::start(
        BINARY,
        cluster,
        &lease_b.name,
        &format!("{}-b", ns.name),
        &["--watch-namespace", &ns.name],
    )
    .unwrap();
    wait_reason(cluster, &ns.name, "history", "Ready", "Reconciled");
    let counts = pg
        .admin(
            &db,
            "SELECT count(*), count(DISTINCT version), max(version) FROM schema_migrations",
        )
        .unwrap();
    assert_eq!(counts, "227|227|227");
    let applied = cluster.kubectl_ok(&["get", "db", "history", "-n", &ns.name, "-o", "jsonpath={.status.migrationsApplied}/{.status.migrationsPending}/{.status.lastMigration}"]).unwrap();
    assert_eq!(applied, "227/0/0227_step_227");

    // A failing migration: its first statement is rolled back with it.
    cluster
        .kubectl_ok(&["patch", "configmap", "migrations", "-n", &ns.name, "--type=merge", "-p",
            r#"{"data":{"0228_bad.sql":"CREATE TABLE t0228 (id int); SELECT no_such_function();"}}"#])
        .unwrap();
    touch(cluster, &ns.name, "history");
    let message = wait_reason(cluster, &ns.name, "history", "Degraded", "MigrationFailed");
    assert!(
        message.contains("migration 0228_bad failed and was rolled back")
            && message.contains("no_such_function"),
        "{message}"
    );
    assert_eq!(
        pg.admin(
            &db,
            "SELECT to_regclass('t0228') IS NULL, count(*) FROM schema_migrations"
        )
        .unwrap(),
        "t|227"
    );
    assert_eq!(condition(cluster, &ns.name, "history", "Ready").0, "False");

    // Fixed: it applies.
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "migrations",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"data":{"0228_bad.sql":"CREATE TABLE t0228 (id int);"}}"#,
        ])
        .unwrap();
    touch(cluster, &ns.name, "history");
    wait_reason(cluster, &ns.name, "history", "Ready", "Reconciled");
    assert_eq!(
        pg.admin(&db, "SELECT count(*) FROM schema_migrations")
            .unwrap(),
        "228"
    );

    // An applied file that changed is refused.
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "migrations",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"data":{"0001_step_1.sql":"CREATE TABLE t0001 (id bigint);"}}"#,
        ])
        .unwrap();
    touch(cluster, &ns.name, "history");
    let message = wait_reason(cluster, &ns.name, "history", "Degraded", "ChecksumMismatch");
    assert!(
        message.contains("migration 0001_step_1 was applied with checksum"),
        "{message}"
    );
}

#[test]
fn bad_servers_and_missing_extensions_are_clear_conditions() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-bad").unwrap();
    admin_secret(cluster, &ns.name, "wrong", &pg.user, "not-the-password");
    admin_secret(cluster, &ns.name, "right", &pg.user, &pg.password);
    let closed_port = homeplane_testkit::free_port().unwrap();
    let db = |name: &str, port: u16, secret: &str, extra: &str| {
        format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: {name}}}\nspec:\n  databaseName: hp_bad_{}\n  server: {{external: {{host: \"{}\", port: {port}, adminSecret: {secret}, sslMode: disable}}}}\n{extra}",
            suffix(),
            pg.host
        )
    };
    for manifest in [
        db("wrong-password", pg.port, "wrong", ""),
        db("unreachable", closed_port, "right", ""),
        db(
            "no-vector",
            pg.port,
            "right",
            "  extensions: [{name: vector}, {name: pg_trgm}]\n",
        ),
        db("no-secret", pg.port, "missing", ""),
        db(
            "bad-version",
            pg.port,
            "right",
            "  extensions: [{name: pg_trgm, version: \"99.0\"}]\n",
        ),
    ] {
        let (ok, text) = cluster.apply(&ns.name, &manifest).unwrap();
        assert!(ok, "{text}");
    }
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let message = wait_reason(
        cluster,
        &ns.name,
        "wrong-password",
        "Degraded",
        "AuthenticationFailed",
    );
    assert!(
        message.contains("refused the admin credentials") && !message.contains("not-the-password"),
        "{message}"
    );
    let message = wait_reason(
        cluster,
        &ns.name,
        "unreachable",
        "Degraded",
        "ServerUnreachable",
    );
    assert!(
        message.contains(&format!("{}:{closed_port}", pg.host)),
        "{message}"
    );
    let message = wait_reason(
        cluster,
        &ns.name,
        "no-vector",
        "Degraded",
        "ExtensionUnavailable",
    );
    assert!(message.contains("no extension vector"), "{message}");
    let message = wait_reason(
        cluster,
        &ns.name,
        "no-secret",
        "Degraded",
        "AdminSecretMissing",
    );
    assert!(
        message.contains("Secret") && message.contains("missing"),
        "{message}"
    );
    let message = wait_reason(
        cluster,
        &ns.name,
        "bad-version",
        "Degraded",
        "ExtensionFailed",
    );
    assert!(
        message.contains("CREATE EXTENSION \"pg_trgm\" VERSION '99.0'"),
        "{message}"
    );
    for name in [
        "wrong-password",
        "unreachable",
        "no-vector",
        "no-secret",
        "bad-version",
    ] {
        assert_eq!(
            condition(cluster, &ns.name, name, "Ready").0,
            "False",
            "{name}"
        );
    }
}

#[test]
fn deletion_policy_decides_what_is_dropped() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-delete").unwrap();
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    let s = suffix();
    let manifest = |name: &str, policy: &str| {
        format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: {name}}}\nspec:\n  databaseName: hp_{name}_{s}\n  deletionPolicy: {policy}\n  server: {{external: {{host: \"{}\", port: {}, adminSecret: pg-admin, sslMode: disable}}}}\n  tiers: [{{name: convenience, schemas: [notes]}}]\n  roles: [{{name: {name}_{s}, access: [{{tier: convenience, level: write}}]}}]\n  migrations: {{inline: [{{id: \"0001_t\", sql: \"CREATE TABLE notes.kept (id int); INSERT INTO notes.kept VALUES (1);\"}}]}}\n",
            pg.host, pg.port
        )
    };
    for (name, policy) in [("keep", "Retain"), ("drop", "Delete")] {
        let (ok, text) = cluster.apply(&ns.name, &manifest(name, policy)).unwrap();
        assert!(ok, "{text}");
    }
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    for name in ["keep", "drop"] {
        wait_reason(cluster, &ns.name, name, "Ready", "Reconciled");
    }
    cluster
        .kubectl_ok(&[
            "delete",
            "database",
            "keep",
            "drop",
            "-n",
            &ns.name,
            "--timeout=60s",
        ])
        .unwrap();
    let left = pg
        .admin("postgres", &format!(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = 'hp_keep_{s}'), (SELECT count(*) FROM pg_database WHERE datname = 'hp_drop_{s}'), (SELECT count(*) FROM pg_roles WHERE rolname = 'keep_{s}'), (SELECT count(*) FROM pg_roles WHERE rolname = 'drop_{s}')"
        ))
        .unwrap();
    assert_eq!(
        left, "1|0|1|0",
        "Retain keeps database and role; Delete drops what homeplane created"
    );
    assert_eq!(
        pg.admin(&format!("hp_keep_{s}"), "SELECT count(*) FROM notes.kept")
            .unwrap(),
        "1",
        "retained data is intact"
    );
}

#[test]
fn a_server_that_keeps_failing_is_retried_with_backoff_and_never_stalls() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-stall").unwrap();
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    // A port that accepts connections and drops them at once: every attempt fails, and each
    // one is counted.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let manifest = format!(
        "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: gone}}\nspec:\n  server: {{external: {{host: \"127.0.0.1\", port: {dead_port}, adminSecret: pg-admin, sslMode: disable}}}}\n"
    );
    let (ok, text) = cluster.apply(&ns.name, &manifest).unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    let message = wait_reason(cluster, &ns.name, "gone", "Ready", "ServerUnreachable");
    assert!(
        message.contains(&format!("127.0.0.1:{dead_port}")),
        "{message}"
    );
    // Half a minute of failures: never Stalled (the server may come back), and tried again
    // with backoff rather than in a tight loop.
    let start = connections.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..15 {
        assert_eq!(
            condition(cluster, &ns.name, "gone", "Stalled").0,
            "",
            "a server that may come back is never Stalled"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let attempts = connections.load(std::sync::atomic::Ordering::SeqCst) - start;
    println!("connection attempts in 30 s of failures: {attempts}");
    assert!(attempts >= 2, "retried: {attempts} attempts in 30 s");
    assert!(attempts <= 60, "not hammering: {attempts} attempts in 30 s");
    assert_eq!(
        condition(cluster, &ns.name, "gone", "Ready").1,
        "ServerUnreachable"
    );
    // The right port (a change of the world would do as well) and it is Ready.
    let fixed = manifest
        .replace(&format!("port: {dead_port}"), &format!("port: {}", pg.port))
        .replace("127.0.0.1", &pg.host);
    let (ok, text) = cluster.apply(&ns.name, &fixed).unwrap();
    assert!(ok, "{text}");
    wait_reason(cluster, &ns.name, "gone", "Ready", "Reconciled");
    assert_eq!(condition(cluster, &ns.name, "gone", "Stalled").0, "");
}

#[test]
fn keywords_tls_and_password_rotation() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-tls").unwrap();
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    let db = format!("hp_tls_{}", suffix());
    // A role and a schema named like SQL keywords, over TLS.
    let manifest = |ssl: &str, rotation: &str| {
        format!(
            "apiVersion: homeplane.dev/v1alpha1\nkind: Database\nmetadata: {{name: kw}}\nspec:\n  databaseName: {db}\n  deletionPolicy: Delete\n  rotatePasswords: \"{rotation}\"\n  server: {{external: {{host: \"{}\", port: {}, adminSecret: pg-admin, sslMode: {ssl}}}}}\n  tiers: [{{name: orders, schemas: [order]}}]\n  roles: [{{name: select, access: [{{tier: orders, level: write}}]}}]\n  migrations: {{inline: [{{id: \"0001_t\", sql: \"CREATE TABLE \\\"order\\\".\\\"table\\\" (id int); INSERT INTO \\\"order\\\".\\\"table\\\" VALUES (7);\"}}]}}\n",
            pg.host, pg.port
        )
    };
    let (ok, text) = cluster
        .apply(&ns.name, &manifest("verify-full", "1"))
        .unwrap();
    assert!(ok, "{text}");
    let _operator = Operator::start(BINARY, cluster, &ns.name, &ns.name, &[]).unwrap();
    // verify-full refuses the server's self-signed certificate, and says so.
    let message = wait_reason(cluster, &ns.name, "kw", "Degraded", "ServerUnreachable");
    assert!(
        message.to_lowercase().contains("certificate") || message.to_lowercase().contains("tls"),
        "{message}"
    );

    let (ok, text) = cluster.apply(&ns.name, &manifest("require", "1")).unwrap();
    assert!(ok, "{text}");
    wait_reason(cluster, &ns.name, "kw", "Ready", "Reconciled");
    let tls = pg
        .admin("postgres", &format!("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'homeplane' AND a.datname = '{db}'"))
        .unwrap();
    assert_eq!(tls, "t", "homeplane's connections use TLS");
    let password = secret_field(cluster, &ns.name, "kw-select", "password");
    assert_eq!(
        pg.psql_as(
            "select",
            &password,
            &db,
            "SELECT id FROM \"order\".\"table\""
        )
        .unwrap(),
        (true, "7".to_string())
    );

    // Changing rotatePasswords gives the role a new password; the old one stops working.
    let (ok, text) = cluster.apply(&ns.name, &manifest("require", "2")).unwrap();
    assert!(ok, "{text}");
    let rotated = eventually(Duration::from_secs(60), "a rotated password", || {
        let now = secret_field(cluster, &ns.name, "kw-select", "password");
        Ok((now != password && !now.is_empty()).then_some(now))
    })
    .unwrap();
    eventually(Duration::from_secs(30), "the new password to work", || {
        Ok(pg
            .psql_as("select", &rotated, &db, "SELECT 1")?
            .0
            .then_some(()))
    })
    .unwrap();
    assert!(
        !pg.psql_as("select", &password, &db, "SELECT 1").unwrap().0,
        "the old password must fail"
    );
    cluster
        .kubectl_ok(&["delete", "database", "kw", "-n", &ns.name, "--timeout=60s"])
        .unwrap();
    assert_eq!(
        pg.admin(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'select'"
        )
        .unwrap(),
        "0"
    );
}

/// Whether `text` holds `password` in any form a log could show it: as is, or base64.
fn leaks(text: &str, password: &str) -> bool {
    let encoded = {
        let out = std::process::Command::new("base64")
            .args(["-w", "0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        out.stdin
            .as_ref()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    text.contains(password) || text.contains(encoded.trim_end_matches('='))
}

#[test]
fn a_password_rotation_reaches_no_log() {
    let cluster = Cluster::shared();
    let ns = TestNamespace::new(cluster, "db-secret-logs").unwrap();
    let s = suffix();
    // A server of its own that logs every statement.
    let dir = std::env::temp_dir().join(format!("homeplane-pg-logs-{s}"));
    let pg = Postgres::start_own(&dir).unwrap();
    pg.admin("postgres", "ALTER SYSTEM SET log_statement = 'all'")
        .unwrap();
    pg.admin("postgres", "SELECT pg_reload_conf()").unwrap();
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    let spec = |rotation: &str| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: vault}}
spec:
  databaseName: vault
  rotatePasswords: "{rotation}"
  server: {{external: {{host: "{}", port: {}, adminSecret: pg-admin, sslMode: disable}}}}
  tiers: [{{name: sacred, schemas: [clinical]}}]
  roles:
  - {{name: app, access: [{{tier: sacred, level: write}}]}}
"#,
            pg.host, pg.port
        )
    };
    let (ok, text) = cluster.apply(&ns.name, &spec("1")).unwrap();
    assert!(ok, "{text}");
    let operator = Operator::start_with_env(
        BINARY,
        cluster,
        &ns.name,
        &format!("db-logs-{s}"),
        &[],
        &[("RUST_LOG", "trace")],
    )
    .unwrap();
    wait_reason(cluster, &ns.name, "vault", "Ready", "Reconciled");
    let first = secret_field(cluster, &ns.name, "vault-app", "password");
    assert_eq!(first.len(), 32);
    let (ok, text) = pg.psql_as("app", &first, "vault", "SELECT 1").unwrap();
    assert!(ok, "the role logs in with the first password: {text}");

    // Rotate.
    let (ok, text) = cluster.apply(&ns.name, &spec("2")).unwrap();
    assert!(ok, "{text}");
    let second = eventually(Duration::from_secs(90), "a new password", || {
        let p = secret_field(cluster, &ns.name, "vault-app", "password");
        Ok((p.len() == 32 && p != first).then_some(p))
    })
    .unwrap();
    eventually(Duration::from_secs(90), "the new password accepted", || {
        let (ok, _) = pg.psql_as("app", &second, "vault", "SELECT 1")?;
        Ok(ok.then_some(()))
    })
    .unwrap();

    // Neither PostgreSQL's log (every statement) nor the operator's (trace) holds a password;
    // what PostgreSQL received was the verifier.
    let pg_log = std::fs::read_to_string(dir.join("postgres.log")).unwrap();
    let op_log = operator.log();
    assert!(
        pg_log.contains("ALTER ROLE") && pg_log.contains("SCRAM-SHA-256$4096:"),
        "statements are logged, and the password went as a verifier: {pg_log}"
    );
    assert!(
        op_log.contains("TRACE"),
        "the operator logged at trace level"
    );
    for password in [&first, &second] {
        assert!(!leaks(&pg_log, password), "a password in PostgreSQL's log");
        assert!(
            !leaks(&op_log, password),
            "a password in the operator's log"
        );
    }
    let events = cluster
        .kubectl_ok(&["get", "events", "-n", &ns.name, "-o", "yaml"])
        .unwrap();
    let status = cluster
        .kubectl_ok(&["get", "database", "vault", "-n", &ns.name, "-o", "yaml"])
        .unwrap();
    for password in [&first, &second] {
        assert!(!leaks(&events, password) && !leaks(&status, password));
    }
    drop(operator);
    Postgres::stop_own(&dir);
}

#[test]
fn drop_never_drops_a_table_the_role_owns() {
    let cluster = Cluster::shared();
    let pg = Postgres::shared();
    let ns = TestNamespace::new(cluster, "db-drop").unwrap();
    let s = suffix();
    let db = format!("hp_drop_{s}");
    let (app, old) = (format!("app_{s}"), format!("old_{s}"));
    admin_secret(cluster, &ns.name, "pg-admin", &pg.user, &pg.password);
    let spec = |roles: &[&str], reassign: Option<&str>| {
        format!(
            r#"apiVersion: homeplane.dev/v1alpha1
kind: Database
metadata: {{name: keeper}}
spec:
  databaseName: {db}
  roleRemovalPolicy: Drop
{}  server: {{external: {{host: "{}", port: {}, adminSecret: pg-admin, sslMode: disable}}}}
  roles: [{}]
"#,
            reassign
                .map(|r| format!("  reassignOwnedTo: {r}\n"))
                .unwrap_or_default(),
            pg.host,
            pg.port,
            roles
                .iter()
                .map(|r| format!("{{name: {r}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let (ok, text) = cluster.apply(&ns.name, &spec(&[&app, &old], None)).unwrap();
    assert!(ok, "{text}");
    let _operator =
        Operator::start(BINARY, cluster, &ns.name, &format!("db-drop-{s}"), &[]).unwrap();
    wait_reason(cluster, &ns.name, "keeper", "Ready", "Reconciled");
    pg.admin(
        &db,
        &format!(
            "CREATE TABLE visits (id int); INSERT INTO visits VALUES (1), (2); ALTER TABLE visits OWNER TO {old}"
        ),
    )
    .unwrap();

    // The role leaves the spec: it owns a table, so it is not dropped, and the condition says
    // which table and what to do.
    let (ok, text) = cluster.apply(&ns.name, &spec(&[&app], None)).unwrap();
    assert!(ok, "{text}");
    let message = wait_reason(cluster, &ns.name, "keeper", "Ready", "InvalidSpec");
    assert!(
        message.contains(&old)
            && message.contains("table visits")
            && message.contains("spec.reassignOwnedTo"),
        "{message}"
    );
    assert_eq!(pg.admin(&db, "SELECT count(*) FROM visits").unwrap(), "2");
    assert_eq!(
        pg.admin(
            &db,
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{old}'")
        )
        .unwrap(),
        "1"
    );

    // Saying who takes its objects over: they are reassigned, then the role is dropped.
    let (ok, text) = cluster.apply(&ns.name, &spec(&[&app], Some(&app))).unwrap();
    assert!(ok, "{text}");
    wait_reason(cluster, &ns.name, "keeper", "Ready", "Reconciled");
    assert_eq!(pg.admin(&db, "SELECT count(*) FROM visits").unwrap(), "2");
    assert_eq!(
        pg.admin(
            &db,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'visits'"
        )
        .unwrap(),
        app
    );
    assert_eq!(
        pg.admin(
            &db,
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{old}'")
        )
        .unwrap(),
        "0"
    );
    let _ = pg.admin(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    let _ = pg.admin("postgres", &format!("DROP ROLE IF EXISTS {app}"));
}
