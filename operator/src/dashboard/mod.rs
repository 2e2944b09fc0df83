//! The status dashboard: the whole homelab on live pages, served by every replica of the
//! operator (the standby too) from its watch caches, or from a laptop by `homeplane
//! dashboard` with watches of its own. A page view asks the API server nothing; one
//! server-sent-event stream per browser re-renders the open page when the caches change.
//! Pages are rendered on the server with tera, and everything (templates, one stylesheet, one
//! small script) is compiled into the binary. Read-only unless `--dashboard-actions`.

pub mod access;
mod actions;
mod live;
pub mod model;
mod pages;
pub mod plugin;
mod postgres;
mod sections;
pub mod snapshot;
mod svg;
pub mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{Caches, Related};
use crate::cli::DashboardAccessArgs;
use crate::controllers::Context;
use crate::metrics::Metrics;
use access::{Access, Refusal, Who};
use snapshot::Snapshot;

/// The version shown in the footer and used to bust the browser's cache of the assets.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const STYLESHEET: &str = include_str!("static/app.css");
const SCRIPT: &str = include_str!("static/app.js");

/// The Content-Security-Policy of every response: no inline script or style, nothing from
/// elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Where the dashboard runs.
pub enum Host {
    /// Inside `homeplane run`: this replica's metrics tell whether it leads.
    Operator {
        /// The operator's metrics.
        metrics: Arc<Metrics>,
        /// This replica's identity in the election.
        identity: String,
    },
    /// `homeplane dashboard` on someone's computer.
    Laptop,
}

/// Everything the handlers share.
pub struct Dashboard {
    caches: Caches,
    related: Related,
    client: Client,
    access: Access,
    actions: bool,
    templates: tera::Tera,
    history: Option<sqlx::PgPool>,
    host: Host,
    started: Instant,
    databases: postgres::Readings,
    ctx: Arc<Context>,
    recorder: Recorder,
}

/// The templates, compiled into the binary.
fn templates() -> Result<tera::Tera, tera::Error> {
    let mut tera = tera::Tera::default();
    tera.add_raw_templates(vec![
        ("macros.html", include_str!("templates/macros.html")),
        ("layout.html", include_str!("templates/layout.html")),
        ("message.html", include_str!("templates/message.html")),
        ("login.html", include_str!("templates/login.html")),
        ("landing.html", include_str!("templates/landing.html")),
        ("kind.html", include_str!("templates/kind.html")),
        (
            "kind_controls.html",
            include_str!("templates/kind_controls.html"),
        ),
        ("object.html", include_str!("templates/object.html")),
        ("activity.html", include_str!("templates/activity.html")),
        (
            "activity_controls.html",
            include_str!("templates/activity_controls.html"),
        ),
        ("drift.html", include_str!("templates/drift.html")),
        (
            "drift_controls.html",
            include_str!("templates/drift_controls.html"),
        ),
        (
            "drift_history.html",
            include_str!("templates/drift_history.html"),
        ),
        ("capacity.html", include_str!("templates/capacity.html")),
        ("databases.html", include_str!("templates/databases.html")),
        ("database.html", include_str!("templates/database.html")),
        ("backups.html", include_str!("templates/backups.html")),
        ("workflows.html", include_str!("templates/workflows.html")),
        ("ai.html", include_str!("templates/ai.html")),
    ])?;
    tera.autoescape_on(vec![".html"]);
    Ok(tera)
}

/// What the landing page says about the operator.
#[derive(Serialize)]
pub struct OperatorView {
    mode: &'static str,
    identity: String,
    version: &'static str,
    uptime: String,
    memory: String,
    controllers: Vec<(String, String)>,
    leader: Option<String>,
    history: bool,
    actions: bool,
}

/// The resident memory of this process, from /proc.
fn resident_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} MiB", kib / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}

fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

impl Dashboard {
    fn operator_view(&self, snapshot: &Snapshot) -> OperatorView {
        let (mode, identity, controllers) = match &self.host {
            Host::Operator { metrics, identity } => (
                if metrics.is_leader() {
                    "leader"
                } else {
                    "standby"
                },
                identity.clone(),
                metrics
                    .last_reconciles()
                    .into_iter()
                    .map(|(c, t)| (c.to_string(), model::ago(snapshot.now, t)))
                    .collect(),
            ),
            Host::Laptop => (
                "this computer",
                "homeplane dashboard".to_string(),
                Vec::new(),
            ),
        };
        OperatorView {
            mode,
            identity,
            version: VERSION,
            uptime: uptime(self.started.elapsed()),
            memory: resident_memory(),
            controllers,
            leader: snapshot.lease_holder(),
            history: self.history.is_some(),
            actions: self.actions,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(
            &self.caches,
            Some(&self.related),
            k8s_openapi::jiff::Timestamp::now(),
        )
    }
}

/// What `start` needs besides the caches.
pub struct Settings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Who may look and act.
    pub access: DashboardAccessArgs,
    /// The namespace of the token Secret and of the leader Lease.
    pub operator_namespace: String,
    /// The name of the leader Lease.
    pub lease_name: String,
    /// homeplane's own database, for the drift history.
    pub history_database_url: Option<crate::cli::Redacted>,
    /// Only this namespace's objects.
    pub namespace: Option<String>,
}

/// Starts the dashboard: its extra caches, the token watch and the server, all until `stop`.
/// Returns the bound address.
pub async fn start(
    client: &Client,
    caches: Caches,
    host: Host,
    settings: Settings,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let access = Access::new(
        &settings.access.dashboard_user_header,
        settings.access.dashboard_trusted_proxies.clone(),
        settings
            .access
            .dashboard_token_secret
            .as_ref()
            .map(|name| format!("{}/{name}", settings.operator_namespace)),
    )
    .map_err(anyhow::Error::msg)
    .context("--dashboard-user-header")?;
    access.watch_token(client, tasks, stop);
    let (related, related_tasks) = Related::start(
        &caches,
        client,
        settings.namespace.as_deref(),
        Some((&settings.operator_namespace, &settings.lease_name)),
        stop,
    );
    let mut related_tasks = related_tasks;
    tasks.spawn(async move { while related_tasks.join_next().await.is_some() {} });
    // Read-only queries on homeplane's database; connected on first use, migrated by the
    // leader.
    let history = match &settings.history_database_url {
        Some(url) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(
                    crate::controllers::database::quiet_options(url)
                        .context("--history-database-url is not a PostgreSQL URL")?,
                ),
        ),
        None => None,
    };
    let identity = match &host {
        Host::Operator { identity, .. } => identity.clone(),
        Host::Laptop => format!("dashboard-{}", std::env::var("USER").unwrap_or_default()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "homeplane-dashboard".into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(Metrics::default()),
        &identity,
        settings.namespace.clone(),
    ));
    let dashboard = Arc::new(Dashboard {
        caches,
        related,
        client: client.clone(),
        access,
        actions: settings.access.dashboard_actions,
        templates: templates().context("the dashboard's templates do not compile")?,
        history,
        host,
        started: Instant::now(),
        databases: postgres::Readings::default(),
        ctx,
        recorder,
    });
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("failed to listen on {} for the dashboard", settings.addr))?;
    let bound = listener.local_addr()?;
    let app = router(dashboard);
    let stop = stop.clone();
    tasks.spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
        if let Err(error) = served {
            warn!(%error, "the dashboard's server stopped");
        }
    });
    Ok(bound)
}

fn router(dashboard: Arc<Dashboard>) -> Router {
    let guarded = Router::new()
        .route("/events", get(live::events))
        .route("/actions/{action}", post(actions::run))
        .fallback(page)
        .layer(middleware::from_fn_with_state(dashboard.clone(), guard));
    Router::new()
        .route(
            "/static/app.css",
            get(|| async { asset(STYLESHEET, "text/css; charset=utf-8") }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route("/login", get(login_form).post(login))
        .route("/healthz", get(|| async { "ok" }))
        .merge(guarded)
        .layer(middleware::from_fn(security_headers))
        .with_state(dashboard)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Headers every response carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Lets a request in (recording who it is from) or refuses it.
async fn guard(
    State(d): State<Arc<Dashboard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match d.access.decide(peer, request.headers()) {
        Ok(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        Err(Refusal::SignIn) => {
            let wants_html = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/html"));
            if wants_html && request.method() == Method::GET {
                Redirect::to("/login").into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "sign in with the dashboard's bearer token\n",
                )
                    .into_response()
            }
        }
        Err(Refusal::Forbidden(why)) => {
            info!(%peer, reason = %why, "dashboard request refused");
            message(&d, StatusCode::FORBIDDEN, "Not allowed", &why)
        }
    }
}

#[derive(Serialize)]
struct Layout<'a> {
    title: &'a str,
    section: &'a str,
    controls: &'a str,
    live: &'a str,
    live_path: String,
    needs: usize,
    version: &'static str,
    who: String,
    actions: bool,
    updated: String,
}

/// A page with a message instead of content.
fn message(d: &Dashboard, status: StatusCode, title: &str, text: &str) -> Response {
    let live = d
        .templates
        .render(
            "message.html",
            &tera::Context::from_serialize(serde_json::json!({"title": title, "text": text}))
                .unwrap_or_default(),
        )
        .unwrap_or_default();
    let html = d
        .templates
        .render(
            "layout.html",
            &tera::Context::from_serialize(Layout {
                title,
                section: "",
                controls: "",
                live: &live,
                live_path: String::new(),
                needs: 0,
                version: VERSION,
                who: String::new(),
                actions: d.actions,
                updated: String::new(),
            })
            .unwrap_or_default(),
        )
        .unwrap_or_else(|_| text.to_string());
    html_response(status, html, None, None)
}

fn html_response(
    status: StatusCode,
    html: String,
    csrf_cookie: Option<&str>,
    timing: Option<f64>,
) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(token) = csrf_cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict",
            access::CSRF_COOKIE
        ))
    {
        h.append(header::SET_COOKIE, v);
    }
    if let Some(ms) = timing
        && let Ok(v) = HeaderValue::from_str(&format!("render;dur={ms:.2}"))
    {
        h.insert("server-timing", v);
    }
    response
}

/// The anti-forgery token of a request, and whether it is new (to be set as a cookie).
fn csrf(headers: &HeaderMap) -> (String, bool) {
    match access::csrf_cookie(headers) {
        Some(token) => (token, false),
        None => (access::new_csrf(), true),
    }
}

/// Renders the page at the request's path: the fallback of every GET.
async fn page(
    State(d): State<Arc<Dashboard>>,
    who: Option<axum::Extension<Who>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET here\n").into_response();
    }
    let who = who.map(|w| w.0).unwrap_or(Who::Local);
    let started = Instant::now();
    let (csrf, new) = csrf(&headers);
    let snapshot = d.snapshot();
    let req = pages::Request {
        path: uri.path(),
        query: pages::parse_query(uri.query()),
        csrf: &csrf,
    };
    let rendered = pages::render_page(&d, &snapshot, &req).await;
    let page = match rendered {
        Ok(page) => page,
        Err(pages::PageError::NotFound(why)) => {
            return message(&d, StatusCode::NOT_FOUND, "Not found", &why);
        }
        Err(error) => {
            let mut causes = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(s) = source {
                causes.push_str(&format!(": {s}"));
                source = s.source();
            }
            warn!(error = %causes, "a dashboard page failed");
            return message(
                &d,
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page failed",
                &causes,
            );
        }
    };
    let needs = model::attention(&snapshot).items.len();
    let layout = Layout {
        title: &page.title,
        section: page.section,
        controls: &page.controls,
        live: &page.live,
        live_path: match uri.query() {
            Some(q) => format!("{}?{q}", uri.path()),
            None => uri.path().to_string(),
        },
        needs,
        version: VERSION,
        who: who.describe(),
        actions: d.actions,
        updated: snapshot
            .now
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    };
    let html = match tera::Context::from_serialize(&layout)
        .and_then(|c| d.templates.render("layout.html", &c))
    {
        Ok(html) => html,
        Err(error) => {
            warn!(%error, "the dashboard's layout failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "the layout failed\n").into_response();
        }
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    html_response(page.status, html, new.then_some(csrf.as_str()), Some(ms))
}

async fn login_form(State(d): State<Arc<Dashboard>>) -> Response {
    let html = d
        .templates
        .render(
            "login.html",
            &tera::Context::from_serialize(
                serde_json::json!({"error": "", "has_token": d.access.has_token()}),
            )
            .unwrap_or_default(),
        )
        .unwrap_or_default();
    html_response(StatusCode::OK, html, None, None)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks a token typed into the sign-in form; keeps its hash in a cookie.
async fn login(
    State(d): State<Arc<Dashboard>>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if d.access.token_matches(&form.token)
        && let Some(value) = d.access.cookie_for_token()
    {
        let mut response = Redirect::to("/").into_response();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict",
            access::TOKEN_COOKIE
        )) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
        return response;
    }
    let html = d
        .templates
        .render(
            "login.html",
            &tera::Context::from_serialize(serde_json::json!({"error": "That is not the dashboard's token.", "has_token": d.access.has_token()})).unwrap_or_default(),
        )
        .unwrap_or_default();
    html_response(StatusCode::UNAUTHORIZED, html, None, None)
}

/// Serves the dashboard from `homeplane run` when `--dashboard-addr` is given, on this replica
/// whether it leads or stands by, until `stop`. The returned tasks must be kept.
pub async fn serve_in_operator(
    args: &crate::cli::RunArgs,
    client: &Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    identity: &str,
    stop: &CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let Some(addr) = args.dashboard.dashboard_addr else {
        return Ok(tasks);
    };
    let settings = Settings {
        addr,
        access: args.dashboard.access.clone(),
        operator_namespace: args.leader_election_namespace.clone(),
        lease_name: args.leader_election_id.clone(),
        history_database_url: args.history_database_url.clone(),
        namespace: args.watch_namespace.clone(),
    };
    let host = Host::Operator {
        metrics,
        identity: identity.to_string(),
    };
    let bound = start(client, caches, host, settings, &mut tasks, stop).await?;
    info!(addr = %bound, actions = args.dashboard.access.dashboard_actions, "serving the dashboard");
    Ok(tasks)
}

/// `homeplane dashboard`: watches of its own through the kubeconfig, served on this computer
/// until Ctrl-C.
pub async fn serve_locally(args: crate::cli::DashboardArgs) -> anyhow::Result<()> {
    let (client, _) = plugin::client(&args.kube).await?;
    let stop = CancellationToken::new();
    let (caches, mut tasks) = Caches::start(&client, args.namespace.as_deref(), &stop);
    let settings = Settings {
        addr: args.addr,
        access: args.access,
        operator_namespace: args.operator_namespace,
        lease_name: "homeplane-operator".to_string(),
        history_database_url: args.history_database_url,
        namespace: args.namespace,
    };
    let bound = start(&client, caches, Host::Laptop, settings, &mut tasks, &stop).await?;
    println!("homeplane dashboard: http://{bound}/  (Ctrl-C to stop)");
    tokio::signal::ctrl_c().await.ok();
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Strips what may not stand in an SSE data line.
fn for_event(html: &str) -> String {
    html.replace('\r', "")
}
