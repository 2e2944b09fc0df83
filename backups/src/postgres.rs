//! PostgreSQL as a source and a sink: `pg_dump --format=custom` streamed from the child process,
//! and `pg_restore` fed through its standard input in one transaction. Credentials go to the
//! child in its environment (`PGPASSWORD`), never on its command line.

use std::io;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::source::CheckedSource;

/// How to reach a database.
#[derive(Clone)]
pub struct PgConn {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Database name.
    pub dbname: String,
    /// libpq `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub sslmode: String,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=...`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or("a database URL starts with postgres://")?;
        let (credentials, location) = rest
            .rsplit_once('@')
            .ok_or("the database URL has no user@ part")?;
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let (location, query) = location.split_once('?').unwrap_or((location, ""));
        let (hostport, dbname) = location.split_once('/').unwrap_or((location, "postgres"));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port number"))?,
            ),
            None => (hostport, 5432),
        };
        let sslmode = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("sslmode="))
            .unwrap_or("prefer");
        Ok(PgConn {
            host: host.to_string(),
            port,
            user: decode(user),
            password: decode(password),
            dbname: decode(if dbname.is_empty() {
                "postgres"
            } else {
                dbname
            }),
            sslmode: sslmode.to_string(),
        })
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", &self.dbname)
            .env("PGSSLMODE", &self.sslmode)
            .env("PGAPPNAME", "homeplane-backup")
            .env_remove("PGSERVICE")
            .env_remove("PGPASSFILE");
    }
}

/// Percent-decoding of URL parts.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The standard output of a child process as a source; at its end, a non-zero exit of the
/// child becomes a read error carrying the end of its standard error, so a failed dump can
/// never be mistaken for a complete one. The child is killed if the source is dropped early.
pub type ChildSource = CheckedSource<ChildStdout>;

impl CheckedSource<ChildStdout> {
    /// Starts `cmd` with its standard output piped to this source.
    pub fn spawn(mut cmd: Command, what: &'static str) -> io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("failed to start {what}: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let exit = tokio::spawn(async move {
            match wait_with_stderr(child).await {
                Ok((status, _)) if status.success() => Ok(()),
                Ok((status, stderr)) => Err(io::Error::other(format!(
                    "{what} failed ({status}): {stderr}"
                ))),
                Err(e) => Err(io::Error::other(format!("waiting for {what}: {e}"))),
            }
        });
        Ok(Self::new(stdout, exit))
    }
}

/// Waits for `child`, keeping the last 4 KiB of its standard error.
async fn wait_with_stderr(mut child: Child) -> io::Result<(ExitStatus, String)> {
    let mut tail = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        let mut buf = [0u8; 4096];
        loop {
            let n = stderr.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
    }
    let status = child.wait().await?;
    Ok((status, String::from_utf8_lossy(&tail).trim().to_string()))
}

/// `pg_dump --format=custom` of `conn`'s database, uncompressed (the pipeline compresses).
pub fn pg_dump(conn: &PgConn) -> io::Result<ChildSource> {
    let mut cmd = Command::new("pg_dump");
    cmd.args(["--format=custom", "--compress=0", "--no-password"]);
    conn.apply(&mut cmd);
    ChildSource::spawn(cmd, "pg_dump")
}

/// A running `pg_restore` reading a custom-format dump from its standard input.
pub struct PgRestore {
    exit: JoinHandle<io::Result<(ExitStatus, String)>>,
}

impl PgRestore {
    /// Waits for pg_restore; a non-zero exit becomes an error with the end of its stderr.
    pub async fn wait(self) -> Result<(), String> {
        match self.exit.await {
            Ok(Ok((status, _))) if status.success() => Ok(()),
            Ok(Ok((status, stderr))) => Err(format!("pg_restore failed ({status}): {stderr}")),
            Ok(Err(e)) => Err(format!("waiting for pg_restore: {e}")),
            Err(e) => Err(format!("waiting for pg_restore: {e}")),
        }
    }

    /// Stops pg_restore without letting it finish (its transaction rolls back).
    pub fn kill(self) {
        self.exit.abort();
    }
}

/// Starts `pg_restore` into `conn`'s database, in one transaction that stops at the first
/// error, without restoring ownership (objects belong to `conn`'s role). With `clean`, objects
/// of the dump that already exist are dropped first (for restore drills into a scratch
/// database). Returns where to write the dump (shut it down or drop it to end the input) and
/// the process.
pub fn pg_restore(conn: &PgConn, clean: bool) -> io::Result<(ChildStdin, PgRestore)> {
    let mut cmd = Command::new("pg_restore");
    cmd.args([
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "--no-privileges",
        "--no-password",
    ]);
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg(format!("--dbname={}", conn.dbname));
    conn.apply(&mut cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("failed to start pg_restore: {e}")))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?;
    Ok((
        stdin,
        PgRestore {
            exit: tokio::spawn(wait_with_stderr(child)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_database_urls() {
        let c = PgConn::from_url("postgres://app:p%40ss@db.local:5433/homelab?sslmode=require")
            .unwrap();
        assert_eq!(
            (
                c.user.as_str(),
                c.password.as_str(),
                c.host.as_str(),
                c.port
            ),
            ("app", "p@ss", "db.local", 5433)
        );
        assert_eq!(
            (c.dbname.as_str(), c.sslmode.as_str()),
            ("homelab", "require")
        );
        let c = PgConn::from_url("postgresql://u@h/d").unwrap();
        assert_eq!(
            (c.port, c.password.as_str(), c.sslmode.as_str()),
            (5432, "", "prefer")
        );
        assert!(PgConn::from_url("mysql://x").is_err());
        assert!(!format!("{c:?}").contains("password"));
    }

    #[tokio::test]
    async fn a_failing_child_is_a_read_error_not_an_end() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf partial; echo 'dump broke' >&2; exit 3"]);
        let mut source = ChildSource::spawn(cmd, "the dump").unwrap();
        let mut out = Vec::new();
        let err = source.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(out, b"partial");
        assert!(err.to_string().contains("dump broke"), "{err}");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf complete"]);
        let mut source = ChildSource::spawn(cmd, "the dump").unwrap();
        let mut out = Vec::new();
        source.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"complete");
    }
}
