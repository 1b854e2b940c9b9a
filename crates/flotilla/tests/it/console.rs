//! The web console in a real browser: Debian's chromium driven over WebDriver (chromedriver, the
//! `fantoccini` client) against a `flotilla server` process running a real federation of client
//! processes. The test logs in (a wrong token first), watches a running job's page update without
//! a reload, revokes a client through the page and sees the client refused, and takes the
//! screenshots in `docs/images/console-*.png` (written there with `FLOTILLA_UPDATE_SCREENSHOTS=1`,
//! else to `target/console-screenshots/`).
//!
//! Without chromium or chromedriver the test says so and passes, unless `FLOTILLA_REQUIRE_BROWSER`
//! is set (CI sets it).

use crate::common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How many clients run; the job needs one fewer, so it goes on after one is revoked.
const CLIENTS: usize = 4;

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chromedriver.log")).unwrap())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// A new browser session (its own profile); `mobile`: a 390 px wide phone screen.
    async fn session(&self, name: &str, mobile: bool) -> Client {
        let profile = self.dir.join(format!("chromium-{name}"));
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if mobile {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0}});
        }
        let caps = json!({
            "browserName": "chrome",
            // The federation's dev CA is not in the profile's trust store.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": options,
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a chromium session")
    }
}

/// Whether the browser is here; panics when it must be (`FLOTILLA_REQUIRE_BROWSER`).
fn browser_present() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_BROWSER").is_none(),
            "FLOTILLA_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "SKIPPED console::: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium \
             chromium-driver; set FLOTILLA_REQUIRE_BROWSER=1 to make this a failure)"
        );
    }
    present
}

/// Where screenshots go: `docs/images/` when updating them, else `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = if std::env::var("FLOTILLA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        workspace_root().join("docs/images")
    } else {
        workspace_root().join("target/console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_dir().join(format!("console-{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Runs `script` (a function body) in the page; its JSON result.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Polls `script` until `done` holds for its result (panics naming `what` after `secs`).
async fn wait_js(
    c: &Client,
    what: &str,
    secs: u64,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = js(c, script).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn text_of(id: &str) -> String {
    format!("const e = document.getElementById('{id}'); return e ? e.textContent : null;")
}

async fn log_in(c: &Client, url: &str, token: &str) {
    c.goto(url).await.unwrap();
    let input = c
        .wait()
        .for_element(Locator::Id("login-token"))
        .await
        .unwrap();
    wait_js(
        c,
        "the login form",
        20,
        "return !document.getElementById('login-view').hidden;",
        |v| v == true,
    )
    .await;
    input.send_keys(token).await.unwrap();
    c.find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// "N / M" → N.
fn rounds_done(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.split(" / ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn accuracy_points(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn the_console_logs_in_follows_a_live_job_and_revokes_a_client() {
    if !browser_present() {
        return;
    }
    let mut f = Federation::new("console", None);
    f.start_clients(CLIENTS);
    let spec = std::fs::read_to_string(workspace_root().join("examples/job-digits.toml"))
        .unwrap()
        .replace("name = \"digits\"", "name = \"console-digits\"")
        .replace("rounds = 20", "rounds = 200")
        .replace(
            "clients_per_round = 10",
            &format!("clients_per_round = {}", CLIENTS - 1),
        )
        .replace(
            "min_clients = 10",
            &format!("min_clients = {}", CLIENTS - 1),
        );
    let job = f.submit(&spec);
    let url = format!("{}/", f.admin_url());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let driver = Driver::start(&f.dir);
    rt.block_on(async {
        let c = driver.session("wide", false).await;

        // A wrong token: a one-line error on the page, no cookie, one more auth failure.
        let failures = f.metrics()["auth_failures"].as_u64().unwrap();
        log_in(&c, &url, "not-the-admin-token").await;
        let err = wait_js(&c, "the login error", 20, &text_of("login-error"), |v| {
            v.as_str().is_some_and(|s| !s.is_empty())
        })
        .await;
        assert_eq!(err, "wrong admin token");
        assert!(c.get_all_cookies().await.unwrap().is_empty(), "no cookie after a wrong token");
        assert_eq!(f.metrics()["auth_failures"].as_u64().unwrap(), failures + 1);
        assert_eq!(js(&c, "return document.cookie;").await, "");

        // The right token: an HttpOnly, Secure, SameSite=Strict session cookie.
        c.find(Locator::Id("login-token")).await.unwrap().clear().await.unwrap();
        c.find(Locator::Id("login-token")).await.unwrap().send_keys(ADMIN_TOKEN).await.unwrap();
        c.find(Locator::Id("login-submit")).await.unwrap().click().await.unwrap();
        wait_js(&c, "the overview", 30, &text_of("stat-enrolled"), |v| v == &json!(CLIENTS.to_string())).await;
        let cookies = c.get_all_cookies().await.unwrap();
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        let cookie = &cookies[0];
        assert_eq!(cookie.name(), "flotilla_session");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.secure(), Some(true));
        // (fantoccini does not re-export cookie's SameSite.)
        assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
        assert_eq!(js(&c, "return document.cookie;").await, "", "HttpOnly: invisible to scripts");
        let link = format!("return document.querySelector('a[href=\"#/jobs/{job}\"]') !== null;");
        wait_js(&c, "the job in the list", 30, &link, |v| v == true).await;

        // The job page updates itself: the round count and the accuracy chart grow, and the
        // marker set in the page survives (no reload).
        c.goto(&format!("{url}#/jobs/{job}")).await.unwrap();
        let first = wait_js(&c, "the job page", 60, &text_of("job-rounds"), |v| rounds_done(v) >= 2).await;
        let points = "const e = document.getElementById('chart-accuracy'); return e ? e.getAttribute('data-points') : null;";
        let first_points = accuracy_points(&wait_js(&c, "accuracy points", 60, points, |v| accuracy_points(v) >= 1).await);
        js(&c, "window.__flotillaMarker = 'still here'; return null;").await;
        let later = wait_js(&c, "more rounds", 60, &text_of("job-rounds"), |v| rounds_done(v) >= rounds_done(&first) + 3).await;
        let later_points = accuracy_points(&wait_js(&c, "more accuracy points", 60, points, |v| accuracy_points(v) > first_points).await);
        assert!(rounds_done(&later) > rounds_done(&first));
        assert!(later_points > first_points);
        assert_eq!(js(&c, "return window.__flotillaMarker;").await, "still here", "the page was reloaded");
        let label = js(&c, "return document.getElementById('chart-accuracy').getAttribute('aria-label');").await;
        let label = label.as_str().unwrap();
        assert!(label.starts_with("Accuracy per round: ") && label.contains(" at round "), "{label}");
        screenshot(&c, "job").await;
        // The overview, with the job under way.
        c.goto(&url).await.unwrap();
        wait_js(&c, "the overview", 30, &link, |v| v == true).await;
        wait_js(&c, "the job's rounds", 30, "return document.querySelector('td.num') !== null;", |v| v == true).await;
        screenshot(&c, "overview").await;

        // Revoke a client through the page, with its confirmation dialog.
        let failures = f.metrics()["auth_failures"].as_u64().unwrap();
        c.goto(&format!("{url}#/clients")).await.unwrap();
        let button = c.wait().for_element(Locator::Css("button[id^='revoke-']")).await.unwrap();
        let id: u64 = button.attr("id").await.unwrap().unwrap()["revoke-".len()..].parse().unwrap();
        button.click().await.unwrap();
        wait_js(&c, "the dialog", 10, "return document.getElementById('confirm').open;", |v| v == true).await;
        c.find(Locator::Id("confirm-ok")).await.unwrap().click().await.unwrap();
        let status = wait_js(&c, "the revocation", 20, &text_of("clients-status"), |v| {
            v.as_str().is_some_and(|s| !s.is_empty())
        })
        .await;
        assert_eq!(status, json!(format!("Client {id} revoked.")));
        let out = f.admin_cli(&["client", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let revoked: Vec<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["revoked"] == true)
            .map(|c| c["client_id"].as_u64().unwrap())
            .collect();
        assert_eq!(revoked, vec![id]);
        // Its next call is refused: it exits saying so, and the refusal is counted.
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited = loop {
            let done: Vec<usize> = (0..CLIENTS)
                .filter(|&i| f.clients.0[i].try_wait().unwrap().is_some())
                .collect();
            if !done.is_empty() {
                break done;
            }
            assert!(Instant::now() < deadline, "no client process ended after the revocation");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(exited.len(), 1, "only the revoked client stops: {exited:?}");
        let log = std::fs::read_to_string(f.dir.join(format!("client-{}.log", exited[0]))).unwrap();
        assert!(log.contains(&format!("credential of client {id} was revoked")), "{log}");
        assert!(f.metrics()["auth_failures"].as_u64().unwrap() > failures);
        c.close().await.unwrap();

        // 390 px wide (a phone): the job page still reads, charts included.
        let phone = driver.session("narrow", true).await;
        log_in(&phone, &url, ADMIN_TOKEN).await;
        wait_js(&phone, "the overview", 30, &text_of("stat-enrolled"), |v| v.is_string()).await;
        phone.goto(&format!("{url}#/jobs/{job}")).await.unwrap();
        wait_js(&phone, "the job page", 30, points, |v| accuracy_points(v) >= 1).await;
        assert_eq!(js(&phone, "return window.innerWidth;").await, 390);
        let overflow = js(&phone, "return document.documentElement.scrollWidth;").await;
        assert!(overflow.as_u64().unwrap() <= 390, "the page scrolls sideways: {overflow}");
        screenshot(&phone, "job-narrow").await;
        phone.close().await.unwrap();
    });
}
