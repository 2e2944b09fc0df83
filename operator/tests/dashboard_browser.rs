//! The status dashboard in a real browser: Debian's Chromium driven over W3C WebDriver by
//! chromedriver (both installed by scripts/setup.sh). A person opens "what needs me", follows
//! a link to a Database's page, watches drift appear without reloading, presses "back up now"
//! and sees the Backup appear and finish, and keeps the page open while the operator restarts.
//! The test writes a screenshot of the landing page to .homeplane/screenshots/.

// Tests fail by panicking; helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dashboard_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dashboard_support::{Dash, Demo, Part, WAIT};
use homeplane_testkit::{eventually, free_port, repo_root};
use serde_json::{Value, json};

/// chromedriver with one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        let port = free_port().unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/setup.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(30), "chromedriver to answer", || {
            let out = Command::new("curl")
                .args(["-sf", &format!("{base}/status")])
                .output()?;
            Ok(out.status.success().then_some(()))
        })
        .unwrap();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
        };
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             format!("--window-size={width},{height}")]
                }
            }}})),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let value = self.try_call(method, path, body);
        if (method != "POST" || !path.ends_with("/element"))
            && let Some(error) = value.get("error")
        {
            panic!("{method} {path}: {error}: {}", value["message"]);
        }
        value
    }

    /// One WebDriver command; returns its `value`, which may be an error.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-X",
            method,
            &url,
            "-H",
            "Content-Type: application/json",
        ]);
        let body = body.map(|b| b.to_string());
        if let Some(b) = &body {
            cmd.args(["--data-binary", b]);
        }
        let out = cmd.output().unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("{method} {path}: {}", String::from_utf8_lossy(&out.stdout))
        });
        json.get("value").cloned().unwrap_or(json)
    }

    fn session(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn goto(&self, url: &str) {
        self.call("POST", &self.session("/url"), Some(json!({"url": url})));
    }

    fn source(&self) -> String {
        self.call("GET", &self.session("/source"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn url(&self) -> String {
        self.call("GET", &self.session("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, if any.
    fn find(&self, css: &str) -> Option<String> {
        let v = self.call(
            "POST",
            &self.session("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_object()?.values().next()?.as_str().map(str::to_string)
    }

    /// Clicks what `css` matches; found again when a live update replaced it meanwhile.
    fn click(&self, css: &str) {
        for _ in 0..10 {
            let element = self
                .find(css)
                .unwrap_or_else(|| panic!("nothing matches {css}:\n{}", self.source()));
            let done = self.try_call(
                "POST",
                &self.session(&format!("/element/{element}/click")),
                Some(json!({})),
            );
            match done.get("error").and_then(Value::as_str) {
                None => return,
                Some("stale element reference") => continue,
                Some(error) => panic!("click {css}: {error}: {}", done["message"]),
            }
        }
        panic!("{css} was replaced by every live update before it could be clicked");
    }

    fn text(&self, css: &str) -> String {
        let Some(element) = self.find(css) else {
            return String::new();
        };
        self.call(
            "GET",
            &self.session(&format!("/element/{element}/text")),
            None,
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Marks the loaded document: the mark is gone after any reload.
    fn mark(&self) {
        self.script("window.homeplaneTestMark = 'still the same page'; return null;");
    }

    fn still_marked(&self) -> bool {
        self.script("return window.homeplaneTestMark || null;") == json!("still the same page")
    }

    fn wait_for(&self, what: &str, text: &str) {
        eventually(WAIT, what, || {
            Ok(self.source().contains(text).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.source()));
    }

    fn screenshot(&self, file: &std::path::Path) {
        let encoded = self.call("GET", &self.session("/screenshot"), None);
        let png = base64_decode(encoded.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = Command::new("curl")
                .args([
                    "-sS",
                    "-X",
                    "DELETE",
                    &format!("{}/session/{}", self.base, self.session),
                ])
                .output();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn a_person_follows_links_sees_drift_live_backs_up_and_keeps_the_page_through_a_restart() {
    let demo = Demo::apply_parts(
        "dash-browser",
        &[Part::Database, Part::Backup, Part::Registry, Part::Agents],
    );
    let ns = demo.ns.name.clone();
    let flags = [
        "--dashboard-actions",
        "--history-database-url",
        demo.history_url.as_str(),
    ];
    let dash = Dash::start(demo.cluster, &ns, "dash-browser", &flags);
    demo.wait_ready("database", "homelab", "True");
    demo.take_backup();
    let browser = Browser::start(1280, 1000);

    // What needs me, and a screenshot of it.
    browser.goto(&format!("{}/", dash.url));
    browser.wait_for("the landing page", "The operator");
    browser.wait_for("the live stream", "class=\"live on\"");
    let shot = repo_root().join(".homeplane/screenshots/dashboard-landing.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // Follow the links to the Database's page.
    browser.click("nav a[href='/databases']");
    browser.wait_for("the databases page", "homelab</a>");
    browser.click(&format!("a[href='/databases/{ns}/homelab']"));
    browser.wait_for(
        "the Database's page",
        "Who may do what, as PostgreSQL enforces it",
    );
    assert!(
        browser.url().ends_with(&format!("/databases/{ns}/homelab")),
        "{}",
        browser.url()
    );
    browser.wait_for("the matrix", "data-enforced=\"write\"");

    // Drift made with kubectl appears on the open page, without a reload.
    browser.goto(&format!("{}/drift", dash.url));
    browser.wait_for("the live stream", "class=\"live on\"");
    browser.mark();
    demo.set_flag("changed");
    browser.wait_for("the drift to appear", "dash.flag.mode");
    assert!(browser.still_marked(), "the page was reloaded");
    let badge = browser.text("#needs");
    assert!(
        !badge.is_empty() && badge != "0",
        "the badge counts the drift: {badge:?}"
    );

    // Back up now: the Backup appears and finishes on the open page.
    browser.goto(&format!("{}/backups", dash.url));
    browser.wait_for("the live stream", "class=\"live on\"");
    browser.click("form[action='/actions/backup'] button");
    browser.wait_for("the page after the action", "Back up now");
    assert!(browser.url().ends_with("/backups"), "{}", browser.url());
    browser.mark();
    let backup = eventually(WAIT, "the Backup asked for", || {
        let out = demo.cluster.kubectl_ok(&[
            "get",
            "backups",
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?;
        Ok(out
            .split(' ')
            .find(|n| n.starts_with("postgres-now-"))
            .map(str::to_string))
    })
    .unwrap();
    browser.wait_for("the new Backup to show", &backup);
    eventually(WAIT, "the new Backup to finish on the page", || {
        let source = browser.source();
        let row = source
            .split(&format!(">{backup}</a>"))
            .nth(1)
            .unwrap_or_default();
        Ok(row
            .split("</tr>")
            .next()
            .unwrap_or_default()
            .contains(">Succeeded<")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", browser.source()));
    assert!(browser.still_marked(), "the page was reloaded");

    // The operator restarts: the page says so, reconnects by itself and goes on updating.
    browser.goto(&format!("{}/drift", dash.url));
    browser.wait_for("the live stream", "class=\"live on\"");
    browser.mark();
    let port = dash.port;
    drop(dash);
    eventually(WAIT, "the page to notice the operator is gone", || {
        Ok(browser
            .text("#live-state")
            .contains("reconnecting")
            .then_some(()))
    })
    .unwrap();
    let dash = Dash::start_on(demo.cluster, &ns, "dash-browser", port, &flags);
    eventually(WAIT, "the page to reconnect", || {
        Ok((browser.text("#live-state") == "live").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", dash.operator.log()));
    demo.set_flag("steady");
    browser.wait_for(
        "the drift to clear after the restart",
        "Nothing has drifted",
    );
    assert!(browser.still_marked(), "the page was reloaded");
    drop(browser);

    // On a phone: nothing wider than the screen.
    let phone = Browser::start(360, 780);
    for page in [
        "/",
        "/drift",
        "/backups",
        &format!("/databases/{ns}/homelab"),
        "/ai",
    ] {
        phone.goto(&format!("{}{page}", dash.url));
        phone.wait_for(page, "</footer>");
        let fits =
            phone.script("return document.documentElement.scrollWidth <= window.innerWidth;");
        assert_eq!(fits, json!(true), "{page} is wider than 360 px");
    }
}
