//! A small client of n8n's public REST API (`/api/v1`, header `X-N8N-API-KEY`): workflows
//! (create, get, update, delete, activate, deactivate) and executions. Every failure carries
//! n8n's own message; the API key never appears in an error, and never leaves for another
//! address: redirects are not followed (reqwest keeps custom headers such as
//! `X-N8N-API-KEY` across hosts), a redirect is an error saying where to point the Workflow.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Longest one call to n8n may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response read (a workflow with many nodes is a few hundred KiB).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The shared HTTP(S) client; cheap to clone. TLS uses the process-wide rustls provider.
#[derive(Clone)]
pub struct Http(reqwest::Client);

impl Http {
    /// A client with homeplane's timeouts.
    pub fn new() -> Result<Self, String> {
        reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map(Self)
            .map_err(|e| error_chain(&e))
    }
}

/// What went wrong talking to n8n.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum N8nError {
    /// No answer: connection refused, DNS, TLS or timeout.
    #[error("cannot reach n8n at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// 401/403: the API key was refused.
    #[error("n8n at {url} refused the API key ({status}): {message}")]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
    },
    /// 404.
    #[error("n8n has no {what}")]
    NotFound { what: String },
    /// Any other 4xx/5xx: n8n's own message.
    #[error("n8n answered {status}: {message}")]
    Rejected { status: u16, message: String },
    /// An answer that is not the JSON the API documents.
    #[error("unexpected answer from n8n: {0}")]
    Protocol(String),
}

/// The most recent execution of a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastExecution {
    /// `success`, `error`, `running`, `waiting`, `canceled`, …
    pub status: String,
    /// RFC 3339 time it stopped, if it did.
    pub stopped_at: Option<String>,
}

/// One n8n instance, reached with one API key.
pub struct N8n<'a> {
    http: &'a Http,
    base: String,
    api_key: &'a str,
}

impl<'a> N8n<'a> {
    /// The instance at `url` (e.g. `http://n8n.automation:5678`).
    pub fn new(http: &'a Http, url: &str, api_key: &'a str) -> Self {
        Self {
            http,
            base: url.trim_end_matches('/').to_string(),
            api_key,
        }
    }

    /// The workflow with `id`; `None` when n8n has none.
    pub async fn get_workflow(&self, id: &str) -> Result<Option<Value>, N8nError> {
        match self.call(Method::GET, &workflow_path(id), None).await {
            Ok(v) => Ok(Some(v)),
            Err(N8nError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of the workflows n8n holds (`limit` at most 250) and the cursor of the next
    /// page, if there is one.
    pub async fn list_workflows(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Value>, Option<String>), N8nError> {
        let mut path = format!("/api/v1/workflows?limit={}", limit.clamp(1, 250));
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode_component(c)));
        }
        let page = self.call(Method::GET, &path, None).await?;
        let Some(data) = page.get("data").and_then(Value::as_array) else {
            return Err(N8nError::Protocol(
                "the workflows list has no `data` array".into(),
            ));
        };
        let next = page
            .get("nextCursor")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        Ok((data.clone(), next))
    }

    /// Creates a workflow; returns n8n's copy (with its `id`).
    pub async fn create_workflow(&self, body: &Value) -> Result<Value, N8nError> {
        self.call(Method::POST, "/api/v1/workflows", Some(body))
            .await
    }

    /// Replaces the definition of workflow `id`.
    pub async fn update_workflow(&self, id: &str, body: &Value) -> Result<Value, N8nError> {
        self.call(Method::PUT, &workflow_path(id), Some(body)).await
    }

    /// Deletes workflow `id`; a workflow that is already gone is not an error.
    pub async fn delete_workflow(&self, id: &str) -> Result<(), N8nError> {
        match self.call(Method::DELETE, &workflow_path(id), None).await {
            Ok(_) | Err(N8nError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Activates or deactivates workflow `id`.
    pub async fn set_active(&self, id: &str, active: bool) -> Result<(), N8nError> {
        let verb = if active { "activate" } else { "deactivate" };
        let path = format!("{}/{verb}", workflow_path(id));
        self.call(Method::POST, &path, None).await.map(|_| ())
    }

    /// The most recent execution of workflow `id`, if it ever ran.
    pub async fn last_execution(&self, id: &str) -> Result<Option<LastExecution>, N8nError> {
        let path = format!(
            "/api/v1/executions?workflowId={}&limit=1",
            encode_component(id)
        );
        let list = self.call(Method::GET, &path, None).await?;
        let Some(first) = list.get("data").and_then(Value::as_array) else {
            return Err(N8nError::Protocol(
                "the executions list has no `data` array".into(),
            ));
        };
        Ok(first.first().map(|e| LastExecution {
            status: e
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    match e.get("finished").and_then(Value::as_bool) {
                        Some(true) => "success",
                        _ => "unknown",
                    }
                    .to_string()
                }),
            stopped_at: e
                .get("stoppedAt")
                .and_then(Value::as_str)
                .map(str::to_string),
        }))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, N8nError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |detail: String| N8nError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let mut request = self
            .http
            .0
            .request(method.clone(), &url)
            .header("X-N8N-API-KEY", self.api_key)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .unwrap_or("elsewhere")
                .to_string();
            return Err(N8nError::Rejected {
                status: status.as_u16(),
                message: format!(
                    "n8n at {} redirects to {to}; homeplane does not follow redirects (the API key would go along): set the Workflow's n8n url to the address n8n answers at",
                    self.base
                ),
            });
        }
        let too_large = || {
            N8nError::Protocol(format!(
                "{method} {path} answered with more than {MAX_BODY} bytes"
            ))
        };
        let bytes = match read_capped(response, MAX_BODY).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(too_large()),
            Err(e) => {
                let detail = format!("reading the answer failed: {}", error_chain(&e));
                return Err(unreachable(detail));
            }
        };
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json.ok_or_else(|| {
                N8nError::Protocol(format!(
                    "{method} {path} answered {status} with a body that is not JSON"
                ))
            });
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                    .trim()
                    .to_string()
            });
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => N8nError::Unauthorized {
                url: self.base.clone(),
                status: status.as_u16(),
                message,
            },
            StatusCode::NOT_FOUND => N8nError::NotFound {
                what: format!("{} ({message})", path.split('?').next().unwrap_or(path)),
            },
            _ => N8nError::Rejected {
                status: status.as_u16(),
                message,
            },
        })
    }
}

/// The body of `response`, read chunk by chunk; `None` as soon as it passes `max` bytes (n8n
/// may answer without a Content-Length, so the length is counted, not announced).
async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn workflow_path(id: &str) -> String {
    format!("/api/v1/workflows/{}", encode_component(id))
}

/// Percent-encodes everything but unreserved characters (n8n ids are alphanumeric anyway).
fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// "error trying to connect: tcp connect error: Connection refused (os error 111)".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An n8n that answers without a Content-Length and does not stop.
    async fn endless_server() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 1 << 20];
            loop {
                let frame = format!("{:x}\r\n", chunk.len());
                if stream.write_all(frame.as_bytes()).await.is_err()
                    || stream.write_all(&chunk).await.is_err()
                    || stream.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn an_answer_without_a_length_is_cut_at_the_cap() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = Http::new().unwrap();
        let url = endless_server().await;
        let client = N8n::new(&http, &url, "key");
        let error = client.get_workflow("w1").await.unwrap_err();
        assert!(
            matches!(&error, N8nError::Protocol(m) if m.contains("more than 16777216 bytes")),
            "{error}"
        );
    }

    /// A one-request HTTP server on loopback that answers `response` and sends what it
    /// received to the returned channel.
    async fn server(response: String) -> (String, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn the_api_key_never_follows_a_redirect() {
        // As main does: reqwest is built without a provider of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (elsewhere, mut received) = server(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_string(),
        )
        .await;
        let (n8n, _) = server(format!(
            "HTTP/1.1 302 Found\r\nlocation: {elsewhere}/api/v1/workflows/1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ))
        .await;
        let http = Http::new().unwrap();
        let error = N8n::new(&http, &n8n, "secret-key")
            .get_workflow("1")
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("does not follow redirects"), "{text}");
        assert!(!text.contains("secret-key"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            received.try_recv().is_err(),
            "the redirect target must never be contacted"
        );
    }

    #[test]
    fn ids_are_encoded_in_paths() {
        assert_eq!(workflow_path("aB3_x"), "/api/v1/workflows/aB3_x");
        assert_eq!(workflow_path("a/b?c"), "/api/v1/workflows/a%2Fb%3Fc");
    }
}
