//! Live updates: one server-sent-event stream per open page. It sends the page's live region
//! at once (so a reconnecting browser gets a fresh snapshot), then again whenever the watch
//! caches changed and the region with them: a change appears within a second, and a burst of
//! changes is sent once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::watch;

use super::{Dashboard, for_event, model, pages};

/// How long after a change the page is rendered, so that a burst of changes is sent once.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(serde::Deserialize)]
pub(super) struct Which {
    /// The page's path and query, e.g. `/drift?severity=critical`.
    page: String,
}

struct Feed {
    dashboard: Arc<Dashboard>,
    changes: watch::Receiver<u64>,
    uri: Uri,
    csrf: String,
    last: Option<(usize, String)>,
    first: bool,
}

/// `GET /events?page=PATH`: the stream of one page's live region (event `page`) and of the
/// count of things that need someone (event `needs`).
pub(super) async fn events(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(which): Query<Which>,
) -> Response {
    let Ok(uri) = which.page.parse::<Uri>() else {
        return (
            StatusCode::BAD_REQUEST,
            "page must be a path such as /drift\n",
        )
            .into_response();
    };
    if !uri.path().starts_with('/') || uri.authority().is_some() {
        return (
            StatusCode::BAD_REQUEST,
            "page must be a path such as /drift\n",
        )
            .into_response();
    }
    let feed = Feed {
        changes: d.caches.changes(),
        dashboard: d,
        uri,
        csrf: super::access::csrf_cookie(&headers).unwrap_or_default(),
        last: None,
        first: true,
    };
    Sse::new(stream(feed))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn stream(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if feed.first {
                feed.first = false;
                // Tell the browser to come back quickly after a restart.
                if let Some(events) = feed.render().await {
                    return Some((Ok(events.retry(Duration::from_millis(1000))), feed));
                }
                continue;
            }
            if feed.changes.changed().await.is_err() {
                // The caches are gone: the process is stopping.
                return None;
            }
            tokio::time::sleep(SETTLE).await;
            feed.changes.borrow_and_update();
            if let Some(event) = feed.render().await {
                return Some((Ok(event), feed));
            }
        }
    })
}

impl Feed {
    /// The page's live region as an event, unless it is what was sent last.
    async fn render(&mut self) -> Option<Event> {
        let d = &self.dashboard;
        let snapshot = d.snapshot();
        let req = pages::Request {
            path: self.uri.path(),
            query: pages::parse_query(self.uri.query()),
            csrf: &self.csrf,
        };
        let live = match pages::render_page(d, &snapshot, &req).await {
            Ok(page) => page.live,
            Err(error) => format!(
                "<p class=\"error\">{}</p>",
                super::svg::esc(&error.to_string())
            ),
        };
        let needs = model::attention(&snapshot).items.len();
        if self
            .last
            .as_ref()
            .is_some_and(|(n, html)| *n == needs && *html == live)
        {
            return None;
        }
        // One event carries both: the count on the first line, the region after it.
        let data = format!("{needs}\n{}", for_event(&live));
        self.last = Some((needs, live));
        Some(Event::default().event("page").data(data))
    }
}
