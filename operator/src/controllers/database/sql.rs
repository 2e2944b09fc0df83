//! Quoting for PostgreSQL: every identifier and literal homeplane puts into SQL goes through
//! here, so no name from a spec can change the meaning of a statement. And the two things that
//! keep passwords out of logs: SCRAM-SHA-256 verifiers (the password never reaches the server)
//! and connection options that never log statements.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

/// PBKDF2 iterations of a verifier: PostgreSQL's default (`scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` with `salt`, in the form PostgreSQL stores in
/// `pg_authid.rolpassword` (RFC 5802/7677): `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// `ALTER ROLE … PASSWORD '<verifier>'` sets the password without the password itself ever
/// being sent, logged by PostgreSQL, or kept in its statistics.
pub fn scram_verifier(password: &str, salt: &[u8]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, SCRAM_ITERATIONS, &mut salted);
    let hmac = |key: &[u8], message: &[u8]| -> Vec<u8> {
        match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length.
            Err(_) => Vec::new(),
        }
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

/// `options` that never log a statement, slow or not (sqlx logs them at debug level, and every
/// slow one at warn, which would put whatever a statement holds into the operator's log).
pub fn quiet(options: PgConnectOptions) -> PgConnectOptions {
    options
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Off, std::time::Duration::from_secs(3600))
}

/// `name` as a quoted identifier: `"name"`, with embedded quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.name` with both parts quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// `text` as a string literal: `'text'`, with embedded quotes doubled. Backslashes are
/// literal because `standard_conforming_strings` is on (the default since 9.1; checked on
/// connect).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What PostgreSQL said about a failed statement (its message alone for a server error).
pub fn message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}

/// Marks a statement built from [`ident`] and [`literal`] (or a migration file's own SQL) as
/// audited for sqlx, which refuses unmarked dynamic SQL.
pub fn audited(sql: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifiers_have_postgresql_s_form_and_depend_on_the_salt() {
        let v = scram_verifier("pencil", b"0123456789abcdef");
        let (head, keys) = v
            .split_once('$')
            .and_then(|(a, rest)| {
                let (salt, keys) = rest.split_once('$')?;
                Some((format!("{a}${salt}"), keys.to_string()))
            })
            .unwrap();
        assert_eq!(
            head,
            format!(
                "SCRAM-SHA-256$4096:{}",
                STANDARD.encode(b"0123456789abcdef")
            )
        );
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(STANDARD.decode(stored).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(server).unwrap().len(), 32);
        assert!(!v.contains("pencil"));
        // Computed independently (Python's hashlib.pbkdf2_hmac and hmac).
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20="
        );
        assert_ne!(v, scram_verifier("pencil", b"fedcba9876543210"));
        assert_eq!(v, scram_verifier("pencil", b"0123456789abcdef"));
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(ident("app"), "\"app\"");
        assert_eq!(ident("select"), "\"select\"");
        assert_eq!(
            ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert_eq!(qualified("clinical", "notes"), "\"clinical\".\"notes\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("'; DROP ROLE app; --"), "'''; DROP ROLE app; --'");
    }
}
