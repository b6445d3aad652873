//! A server-sent events client for tests: streams the body of a `GET` with reqwest, parses it as
//! an `EventSource` would (`event:`, `data:`, comments, blank line ends an event), and hands
//! each event over with the instant it arrived.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One event as `EventSource` would dispatch it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub name: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// `id:`, when the event carried one.
    pub id: Option<String>,
    /// When the client had read the whole event.
    pub at: Instant,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| {
            panic!(
                "`{}` event data is not JSON ({e}): {}",
                self.name, self.data
            )
        })
    }
}

/// An open stream; reading stops when it is dropped.
pub struct SseClient {
    events: mpsc::UnboundedReceiver<SseEvent>,
    reader: JoinHandle<()>,
}

impl SseClient {
    /// Opens `url`, checks the answer is a 200 event stream, and starts reading it.
    pub async fn connect(url: &str) -> SseClient {
        SseClient::connect_with(url, &[]).await
    }

    /// As [`SseClient::connect`], sending `headers` too (a token, `Last-Event-ID`).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let mut response = tokio::time::timeout(
            Duration::from_secs(5),
            headers
                .iter()
                .fold(client.get(url), |r, (k, v)| r.header(*k, *v))
                .header("Accept", "text/event-stream")
                .send(),
        )
        .await
        .expect("the stream answers within 5 s")
        .expect("the stream request");
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type:?}"
        );
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut parser = Parser::default();
            while let Ok(Some(chunk)) = response.chunk().await {
                for event in parser.feed(&chunk) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        SseClient { events, reader }
    }

    /// The next event, if one arrives within `within` (`None` also when the stream ended).
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event named `name` before `deadline`, skipping the others.
    pub async fn next_named(&mut self, name: &str, deadline: Instant) -> Option<SseEvent> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next(left).await?;
            if event.name == name {
                return Some(event);
            }
        }
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The `text/event-stream` grammar, fed chunk by chunk (a chunk may end mid-line).
#[derive(Default)]
struct Parser {
    pending: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl Parser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(SseEvent {
                        name: self.name.take().unwrap_or_else(|| "message".into()),
                        data,
                        id: self.id.take(),
                        at: Instant::now(),
                    });
                }
                self.name = None;
                self.id = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        events
    }
}

#[test]
fn parser_follows_the_event_stream_grammar() {
    let mut p = Parser::default();
    assert!(p.feed(b": hotline\nretry: 2000\n\nevent: met").is_empty());
    let events = p.feed(b"rics\ndata: {\"a\":1}\r\n\r\ndata: x\ndata:y\n\n");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].name, "metrics");
    assert_eq!(events[0].data, "{\"a\":1}");
    assert_eq!(events[1].name, "message");
    assert_eq!(events[1].data, "x\ny");
}
