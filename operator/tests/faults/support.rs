//! What the fault matrix needs besides the shared test servers: toxiproxy (a real
//! fault-injecting TCP proxy, built from its Go module), a small HTTP fault injector (toxiproxy
//! works on TCP; S3's 500s and SlowDowns and n8n's restart are HTTP), private PostgreSQL and
//! n8n servers a test may stop and start, the operator's process (its pid, peak memory), and
//! the results table written to `bench/results/faults.txt` by `bench/faults.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use homeplane_testkit::{Cluster, repo_root, suffix};
use serde_json::{Value, json};

/// One line of the results table: the fault, what ended as, how long recovery took.
pub fn result(fault: &str, outcome: &str, recovery: Option<Duration>) {
    let recovery = recovery
        .map(|d| format!("{:.1}s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into());
    let line = format!("FAULT | {fault} | {outcome} | {recovery}");
    println!("{line}");
    if let Some(path) = std::env::var_os("HOMEPLANE_FAULTS_OUT")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A minimal HTTP/1.0 call on loopback: (status, body).
pub fn http(method: &str, addr: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A toxiproxy server of this test process.
pub struct Toxiproxy {
    api: String,
    dir: PathBuf,
}

impl Toxiproxy {
    /// Starts one (`scripts/toxiproxy.sh up`), stopped when the test process exits.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("hp-toxiproxy-{}", suffix()));
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/toxiproxy.sh"))
            .arg("up")
            .arg(&dir)
            .env(
                "HOMEPLANE_TOXIPROXY_OWNER_PID",
                std::process::id().to_string(),
            )
            .status()?;
        if !status.success() {
            bail!("scripts/toxiproxy.sh up failed");
        }
        let env = std::fs::read_to_string(dir.join("env"))?;
        let url = env
            .trim()
            .trim_start_matches("export TOXIPROXY_URL=")
            .to_string();
        Ok(Self {
            api: url.trim_start_matches("http://").to_string(),
            dir,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, text) = http(method, &self.api, path, body.as_ref())?;
        if !(200..300).contains(&status) {
            bail!("toxiproxy {method} {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A proxy named `name` to `upstream` (`host:port`); returns the address it listens on.
    pub fn proxy(&self, name: &str, upstream: &str) -> Result<String> {
        let created = self.call(
            "POST",
            "/proxies",
            Some(json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true})),
        )?;
        Ok(created["listen"]
            .as_str()
            .context("no listen address")?
            .to_string())
    }

    /// Cuts (`false`: every connection closed, new ones refused) or restores a proxy.
    pub fn enable(&self, name: &str, enabled: bool) -> Result<()> {
        self.call(
            "POST",
            &format!("/proxies/{name}"),
            Some(json!({"enabled": enabled})),
        )
        .map(|_| ())
    }

    /// Adds a toxic (`bandwidth`, `reset_peer`, `timeout`, `latency`…) in `stream` direction.
    pub fn toxic(
        &self,
        proxy: &str,
        name: &str,
        kind: &str,
        stream: &str,
        attributes: Value,
    ) -> Result<()> {
        let body = json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes});
        self.call("POST", &format!("/proxies/{proxy}/toxics"), Some(body))
            .map(|_| ())
    }

    /// Removes a toxic.
    pub fn untoxic(&self, proxy: &str, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/proxies/{proxy}/toxics/{name}"), None)
            .map(|_| ())
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/toxiproxy.sh"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// A copy of `cluster`'s kubeconfig whose server is `addr` (a proxy in front of the API
/// server; the serving certificate names 127.0.0.1, so TLS still checks out).
pub fn kubeconfig_via(cluster: &Cluster, addr: &str, dir: &Path) -> Result<Cluster> {
    let text = std::fs::read_to_string(&cluster.kubeconfig)?;
    let proxied: String = text
        .lines()
        .map(|l| match l.trim_start().starts_with("server: https://") {
            true => format!("    server: https://{addr}"),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join(format!("kubeconfig-{}", suffix()));
    std::fs::write(&path, proxied + "\n")?;
    Ok(Cluster {
        kubeconfig: path,
        bin: cluster.bin.clone(),
    })
}

/// The `host:port` of `cluster`'s API server.
pub fn api_server(cluster: &Cluster) -> Result<String> {
    let text = std::fs::read_to_string(&cluster.kubeconfig)?;
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .context("no server in the kubeconfig")?;
    Ok(server.to_string())
}

/// The pid of the operator started with `identity` (found by its command line).
pub fn operator_pid(identity: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--identity" && w[1] == identity.as_bytes());
        if ours && args.first().is_some_and(|a| a.ends_with(b"homeplane")) {
            return Some(pid);
        }
    }
    None
}

/// A field of `/proc/PID/status` in kB (`VmHWM`, `RssAnon`, ...), as MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory of a process so far (`VmHWM`, file-backed pages of the binary
/// included), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM")
}

/// Anonymous resident memory of a process now (`RssAnon`), in MiB: what a memory limit cannot
/// reclaim. The pages of the binary itself (`RssFile`: about 60 MiB of a debug build's code,
/// 10 of a release build's) are page cache, which the kernel takes back before it kills.
pub fn anon_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "RssAnon")
}

/// Samples a process's anonymous memory every 50 ms until dropped; `peak` is the largest seen.
pub struct AnonPeak {
    peak: Arc<Mutex<f64>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AnonPeak {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(0.0_f64));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(now) = anon_rss_mib(pid) {
                    let mut peak = p.lock().unwrap();
                    *peak = peak.max(now);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest anonymous RSS sampled so far, MiB.
    pub fn peak(&self) -> f64 {
        *self.peak.lock().unwrap()
    }
}

impl Drop for AnonPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A PostgreSQL server of this test alone (`scripts/postgres.sh`), on a fixed port so that it
/// comes back where clients expect it after a stop.
pub struct PrivatePostgres {
    dir: PathBuf,
    /// Port.
    pub port: u16,
    /// Superuser password.
    pub password: String,
}

impl PrivatePostgres {
    /// Starts one.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("hp-pg-{}", suffix()));
        let port = homeplane_testkit::free_port()?;
        let mut pg = Self {
            dir,
            port,
            password: String::new(),
        };
        pg.up()?;
        pg.password = std::fs::read_to_string(pg.dir.join("password"))?
            .trim()
            .to_string();
        Ok(pg)
    }

    fn script(&self, cmd: &str) -> Result<()> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg(cmd)
            .arg(&self.dir)
            .env("POSTGRES_PORT", self.port.to_string())
            .env(
                "HOMEPLANE_POSTGRES_OWNER_PID",
                std::process::id().to_string(),
            )
            .status()?;
        if !status.success() {
            bail!("scripts/postgres.sh {cmd} failed");
        }
        Ok(())
    }

    /// Starts the server (again).
    pub fn up(&self) -> Result<()> {
        self.script("up")
    }

    /// Stops the server (fast shutdown: sessions are cut, their transactions rolled back).
    pub fn down(&self) -> Result<()> {
        self.script("down")
    }

    /// Runs `sql` on `db` as the superuser; its output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let uri = format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        );
        let out = Command::new("psql")
            .arg(uri)
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// An n8n of this test alone (`scripts/n8n.sh`): its data and API key survive a restart; its
/// port does not.
pub struct PrivateN8n {
    dir: PathBuf,
}

impl PrivateN8n {
    /// Starts one.
    pub fn start() -> Result<Self> {
        let n = Self {
            dir: std::env::temp_dir().join(format!("hp-n8n-{}", suffix())),
        };
        n.up()?;
        Ok(n)
    }

    /// Starts n8n (again).
    pub fn up(&self) -> Result<()> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/n8n.sh"))
            .arg("up")
            .arg(&self.dir)
            .status()?;
        if !status.success() {
            bail!("scripts/n8n.sh up failed");
        }
        Ok(())
    }

    /// Stops n8n.
    pub fn down(&self) -> Result<()> {
        Command::new("bash")
            .arg(repo_root().join("scripts/n8n.sh"))
            .arg("down")
            .arg(&self.dir)
            .status()?;
        Ok(())
    }

    fn var(&self, name: &str) -> Result<String> {
        let env = std::fs::read_to_string(self.dir.join("env"))?;
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(String::from)
            .with_context(|| format!("{name} missing"))
    }

    /// `host:port` it listens on now.
    pub fn addr(&self) -> Result<String> {
        Ok(self
            .var("N8N_URL")?
            .trim_start_matches("http://")
            .to_string())
    }

    /// Its API key.
    pub fn api_key(&self) -> Result<String> {
        self.var("N8N_API_KEY")
    }
}

impl Drop for PrivateN8n {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// What the HTTP injector does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answers with this status and body instead of the server.
    Status(u16, String),
    /// Closes the connection without answering (after reading the request: a reset mid-body).
    Reset,
}

/// One rule: the first `times` requests whose method and path-and-query match get `fault`.
pub struct Rule {
    /// E.g. `PUT`.
    pub method: &'static str,
    /// Matches when the path and query contain all of these.
    pub contains: Vec<String>,
    /// What happens.
    pub fault: Fault,
    /// How many requests it applies to (`usize::MAX`: all).
    pub times: usize,
}

#[derive(Default)]
struct Shared {
    upstream: Mutex<String>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<VecDeque<(String, String, u16)>>,
    /// Set by a request that matches `trip`; while set, every request is cut (a server that
    /// went away) until the test clears it.
    down: AtomicBool,
    trip: Mutex<Option<(&'static str, String)>>,
    served: AtomicUsize,
}

/// An HTTP/1.1 proxy in front of a server that injects HTTP faults by rule, and can go "down"
/// right after a given request succeeded (to stop a server between two calls of a client).
#[derive(Clone)]
pub struct Injector {
    shared: Arc<Shared>,
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl Injector {
    /// Starts one in front of `upstream` (`host:port`), on its own thread and runtime.
    pub fn start(upstream: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        *shared.upstream.lock().unwrap() = upstream.to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let s = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, s));
        });
        Ok(Self { shared, addr })
    }

    /// Adds a rule.
    pub fn rule(&self, method: &'static str, contains: &[&str], fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            method,
            contains: contains.iter().map(|s| s.to_string()).collect(),
            fault,
            times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Goes down right after the first request of `method` whose path contains `path` was
    /// answered by the server.
    pub fn down_after(&self, method: &'static str, path: &str) {
        *self.shared.trip.lock().unwrap() = Some((method, path.to_string()));
    }

    /// Whether it is down.
    pub fn is_down(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Back up, in front of `upstream`.
    pub fn up(&self, upstream: &str) {
        *self.shared.upstream.lock().unwrap() = upstream.to_string();
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// The requests seen so far: (method, path and query, status answered; 0 when cut).
    pub fn seen(&self) -> Vec<(String, String, u16)> {
        self.shared.seen.lock().unwrap().iter().cloned().collect()
    }
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone(), client.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;
type Answer = hyper::Response<http_body_util::Full<bytes::Bytes>>;

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    shared: Arc<Shared>,
    client: Client,
) -> Result<Answer, std::io::Error> {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let record = |status: u16| {
        shared
            .seen
            .lock()
            .unwrap()
            .push_back((method.clone(), path.clone(), status));
    };
    let cut = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut by the injector");
    if shared.down.load(Ordering::SeqCst) {
        record(0);
        return Err(cut());
    }
    let fault = {
        let mut rules = shared.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.times > 0 && r.method == method && r.contains.iter().all(|c| path.contains(c))
            })
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| cut())?.to_bytes();
    match fault {
        Some(Fault::Reset) => {
            record(0);
            return Err(cut());
        }
        Some(Fault::Status(code, text)) => {
            record(code);
            let answer = hyper::Response::builder()
                .status(code)
                .header("content-type", "application/xml")
                .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                .unwrap();
            return Ok(answer);
        }
        None => {}
    }
    let upstream = shared.upstream.lock().unwrap().clone();
    let uri: hyper::Uri = format!("http://{upstream}{path}")
        .parse()
        .map_err(|_| cut())?;
    let mut forward = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(uri);
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let forward = forward
        .body(http_body_util::Full::new(body))
        .map_err(|_| cut())?;
    let answer = match client.request(forward).await {
        Ok(answer) => answer,
        Err(_) => {
            record(0);
            return Err(cut());
        }
    };
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map_err(|_| cut())?.to_bytes();
    record(parts.status.as_u16());
    let tripped = shared.trip.lock().unwrap().as_ref().is_some_and(|(m, p)| {
        *m == method && path.contains(p.as_str()) && parts.status.is_success()
    });
    if tripped {
        *shared.trip.lock().unwrap() = None;
        shared.down.store(true, Ordering::SeqCst);
    }
    shared.served.fetch_add(1, Ordering::SeqCst);
    Ok(hyper::Response::from_parts(
        parts,
        http_body_util::Full::new(body),
    ))
}

/// Waits for `check` up to `timeout`, every 250 ms; the value, and how long it took.
pub fn within<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<(T, Duration)> {
    let started = Instant::now();
    let value = homeplane_testkit::eventually(timeout, what, &mut check)?;
    Ok((value, started.elapsed()))
}
