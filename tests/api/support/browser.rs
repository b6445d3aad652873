//! Headless Chromium driven over the DevTools protocol, for tests that look at a page as a
//! person would: open it, let its scripts run (an `EventSource` included), read the DOM, take
//! a screenshot.
//!
//! Why not `chromium --dump-dom --virtual-time-budget=…`: virtual time does not advance while
//! a request is open, and an `EventSource` stream never ends, so Chromium hangs. Instead the
//! test talks to Chromium through `--remote-debugging-pipe` (what Puppeteer does): Chromium reads
//! commands on fd 3 and writes answers on fd 4, JSON messages ended by a NUL byte. The two fds
//! are named pipes (FIFOs) that `sh` opens for it before `exec`, so no unsafe code, no
//! websocket and no extra crate is needed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Runs before the page's own scripts: records what goes wrong in them.
const RECORD_ERRORS: &str = r#"
window.__pageErrors = [];
window.addEventListener("error", (e) => window.__pageErrors.push("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => window.__pageErrors.push("rejection: " + String(e.reason)));
const consoleError = console.error.bind(console);
console.error = (...args) => { window.__pageErrors.push("console.error: " + args.map(String).join(" ")); consoleError(...args); };
"#;

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The Chromium binary, or a failure that says how to get it (never a silent skip).
pub fn chromium() -> PathBuf {
    let candidates = ["chromium", "chromium-browser"];
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in candidates {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "Chromium is not installed (no `chromium` on PATH): the dashboard test needs it. \
         Run scripts/test.sh, which installs it (Debian package `chromium`), or \
         `apt-get install chromium`."
    );
}

/// A running headless Chromium; killed when dropped.
pub struct Browser {
    child: Child,
    to_browser: pipe::Sender,
    from_browser: pipe::Receiver,
    buffer: Vec<u8>,
    next_id: u64,
    dir: tempfile::TempDir,
}

/// A page (a target with a session attached).
pub struct Page {
    session: String,
}

impl Browser {
    pub async fn launch() -> Browser {
        let binary = chromium();
        let dir = tempfile::tempdir().expect("a browser dir");
        let (to, from) = (
            dir.path().join("to-browser"),
            dir.path().join("from-browser"),
        );
        let made = std::process::Command::new("mkfifo")
            .arg(&to)
            .arg(&from)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo");
        // Opened read-write, our ends never block and never see EOF before Chromium opens its
        // own; a Chromium that dies shows as a timeout, reported with its exit status and log.
        let to_browser = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&to)
            .expect("open the command pipe");
        let from_browser = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&from)
            .expect("open the answer pipe");
        let log = std::fs::File::create(dir.path().join("chromium.log")).expect("log file");
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$CDP_TO_BROWSER" 4>"$CDP_FROM_BROWSER""#)
            .arg(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg("about:blank")
            .env("CDP_TO_BROWSER", &to)
            .env("CDP_FROM_BROWSER", &from)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("sh runs");
        let mut browser = Browser {
            child,
            to_browser,
            from_browser,
            buffer: Vec::new(),
            next_id: 0,
            dir,
        };
        let version = browser.call(None, "Browser.getVersion", json!({})).await;
        assert!(
            version["product"].as_str().is_some(),
            "Chromium answers: {version}"
        );
        browser
    }

    /// What went wrong, for a failure message: exit status and the end of Chromium's log.
    fn diagnose(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited ({status})"),
            Ok(None) => "still running".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let log = std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("dbus"))
            .rev()
            .take(15)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("Chromium {status}; its log ends:\n{}", tail.join("\n"))
    }

    /// Sends one command (to the browser, or to a page's session) and returns its result;
    /// events and other answers that arrive meanwhile are skipped.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        let exchange = async {
            self.to_browser.write_all(&bytes).await?;
            loop {
                while let Some(end) = self.buffer.iter().position(|b| *b == 0) {
                    let raw: Vec<u8> = self.buffer.drain(..=end).collect();
                    let answer: Value = serde_json::from_slice(&raw[..raw.len() - 1])
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    if answer["id"] == id {
                        return Ok::<Value, std::io::Error>(answer);
                    }
                }
                let mut chunk = vec![0u8; 256 * 1024];
                let n = self.from_browser.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.buffer.extend_from_slice(&chunk[..n]);
            }
        };
        let answer = match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("DevTools {method}: {e}. {}", self.diagnose()),
            Err(_) => panic!(
                "DevTools {method}: no answer within {CALL_TIMEOUT:?}. {}",
                self.diagnose()
            ),
        };
        if let Some(error) = answer.get("error") {
            panic!("DevTools {method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// Opens `url` in a new page of `width`×`height` CSS pixels.
    pub async fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        };
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        self.call(Some(&page.session), "Page.enable", json!({}))
            .await;
        self.call(
            Some(&page.session),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": RECORD_ERRORS}),
        )
        .await;
        let navigated = self
            .call(Some(&page.session), "Page.navigate", json!({"url": url}))
            .await;
        assert!(
            navigated.get("errorText").is_none(),
            "navigating to {url}: {navigated}"
        );
        page
    }

    /// Evaluates a JavaScript expression in the page and returns its value (as JSON).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("evaluating `{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// What went wrong in the page's scripts so far: uncaught errors, rejected promises and
    /// `console.error` calls.
    pub async fn page_errors(&mut self, page: &Page) -> Vec<String> {
        let errors = self.eval(page, "window.__pageErrors ?? null").await;
        errors
            .as_array()
            .unwrap_or_else(|| panic!("the error recorder runs in the page: {errors}"))
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Writes a PNG of the whole page (as wide as the viewport, as tall as the content) to
    /// `path`, creating its directory.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        let layout = self
            .call(Some(&page.session), "Page.getLayoutMetrics", json!({}))
            .await;
        let size = &layout["cssContentSize"];
        let viewport = &layout["cssLayoutViewport"];
        let width = viewport["clientWidth"].as_f64().unwrap_or(1400.0);
        let height = size["height"]
            .as_f64()
            .unwrap_or(1000.0)
            .max(viewport["clientHeight"].as_f64().unwrap_or(0.0));
        let shot = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await;
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Closes Chromium (every process of it) and waits for it to exit.
    pub async fn close(mut self) {
        self.next_id += 1;
        let mut bytes = serde_json::to_vec(&json!({"id": self.next_id, "method": "Browser.close"}))
            .expect("JSON");
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Standard base64 (with padding), as DevTools sends binary data.
fn base64_decode(text: &str) -> Vec<u8> {
    fn value(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    }
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes_with_and_without_padding() {
    assert_eq!(base64_decode("aG90bGluZQ=="), b"hotline");
    assert_eq!(base64_decode("aG90bGlu"), b"hotlin");
    assert_eq!(base64_decode("aG90bA=="), b"hotl");
    assert_eq!(base64_decode("aG90"), b"hot");
    assert_eq!(base64_decode(""), b"");
}
