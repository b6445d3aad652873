//! The calls scenario's listeners: SSE clients of `GET /api/events` that count the events they
//! are delivered and how long each took from its creation (the event's `at`, stamped by the
//! publishing instance) to its arrival here. Both are wall-clock times of the same machine.
//!
//! Frames are parsed minimally, as hotline writes them: lines ended by `\n`, a blank line ending
//! a frame, `event:`, `id:` and `data:` fields, `:` comments. Of an event's JSON only `type` and
//! `at` are read.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use memchr::memmem;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::stats::Latencies;

/// The path every instance streams every instance's events on.
pub const EVENTS_PATH: &str = "/api/events";
/// How long opening one stream may take.
const CONNECT_AT_MOST: Duration = Duration::from_secs(10);
/// After the load: the events still on their way are waited for until none came for this long…
const QUIET: Duration = Duration::from_millis(500);
/// …or for at most this long.
const DRAIN_AT_MOST: Duration = Duration::from_secs(5);

/// Microseconds since the Unix epoch, now.
fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One complete frame: its `event:` and its `data:` (lines joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub event: &'a [u8],
    pub data: Cow<'a, [u8]>,
}

/// Splits a byte stream into frames; comments, `id:` and `retry:` are skipped. Cheap per byte
/// (`memchr`'s searches) and without an allocation per frame: fifty clients of a busy instance
/// bring hundreds of thousands of frames a second, and the generator must not be what is slow.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    /// How much of `buffer` holds no frame end (searched already).
    searched: usize,
}

impl Parser {
    /// Adds `chunk` and hands `each` the frames it completed that carry data, in order.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(Frame<'_>)) {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        // One byte back: a frame end may straddle two chunks.
        let mut search = self.searched.saturating_sub(1);
        while let Some(i) = memmem::find(&self.buffer[search..], b"\n\n") {
            let end = search + i;
            if let Some(frame) = frame(&self.buffer[start..end]) {
                each(frame);
            }
            start = end + 2;
            search = start;
        }
        self.buffer.drain(..start);
        self.searched = self.buffer.len();
    }
}

/// The fields of one frame's text (without its blank line), if it carries data.
fn frame(raw: &[u8]) -> Option<Frame<'_>> {
    let mut event: &[u8] = b"";
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (name, value) = match memchr::memchr(b':', line) {
            Some(0) => continue,
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => event = value,
            b"data" => {
                data = Some(match data {
                    None => Cow::Borrowed(value),
                    Some(before) => {
                        let mut joined = before.into_owned();
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                        Cow::Owned(joined)
                    }
                })
            }
            _ => {}
        }
    }
    data.map(|data| Frame { event, data })
}

/// When an event was created (its `at`), in µs since the epoch. hotline writes an event's own
/// fields before its `data`, so a `"at":"` before any `"data":` is the event's own (a string
/// value cannot hold that sequence: its quotes would be escaped); JSON laid out otherwise is
/// parsed whole.
pub fn created_at_us(data: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"at\":\"";
    let parse = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros())
    };
    if let Some(i) = memmem::find(data, KEY) {
        if memmem::find(&data[..i], b"\"data\":").is_none() {
            let rest = &data[i + KEY.len()..];
            let end = memchr::memchr(b'"', rest)?;
            return parse(std::str::from_utf8(&rest[..end]).ok()?);
        }
    }
    #[derive(Deserialize)]
    struct At {
        at: chrono::DateTime<chrono::Utc>,
    }
    serde_json::from_slice::<At>(data)
        .ok()
        .map(|e| e.at.timestamp_micros())
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientTally {
    /// Events received in all (any type, any age).
    pub received: u64,
    /// Events created at or after the measured phase began and received during it.
    pub in_phase: u64,
    /// `call.started` events created from the measured phase on.
    pub call_started: u64,
    /// Receive time minus `at`, in microseconds, of the events created from the measured phase
    /// on (0 when the clocks' rounding puts arrival before creation).
    pub latencies_us: Vec<u64>,
    /// Frames whose data is not an event.
    pub malformed: u64,
    /// Why the stream ended before it was told to, if it did.
    pub disconnected: Option<String>,
}

/// The clients, reading in the background.
pub struct Listeners {
    clients: Vec<JoinHandle<ClientTally>>,
    /// Events received by every client so far (to tell when the flow has stopped).
    received: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    /// The measured phase's start, in µs since the epoch (`i64::MAX` until it starts).
    since: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    pub url: String,
}

impl Listeners {
    /// Opens `n` streams of `base`'s `/api/events` with the admin `token` and starts reading
    /// them; fails unless every one answers 200 with an event stream.
    pub async fn connect(base: &str, token: &str, n: usize) -> anyhow::Result<Listeners> {
        let url = format!("{}{EVENTS_PATH}", base.trim_end_matches('/'));
        // No overall timeout: a stream lasts as long as the run.
        let client = reqwest::Client::builder()
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()?;
        let received = Arc::new(AtomicU64::new(0));
        let measuring = Arc::new(AtomicBool::new(false));
        let since = Arc::new(AtomicU64::new(u64::MAX));
        let (stop, stopped) = watch::channel(false);
        let opening = (0..n).map(|_| {
            let request = client
                .get(&url)
                .bearer_auth(token)
                .header("accept", "text/event-stream")
                .send();
            async {
                let response = tokio::time::timeout(CONNECT_AT_MOST, request)
                    .await
                    .with_context(|| format!("{url} did not answer within {CONNECT_AT_MOST:?}"))?
                    .with_context(|| format!("opening {url}"))?;
                let status = response.status();
                if !status.is_success() {
                    bail!("{url} answered {status} (is --admin-token / ADMIN_TOKEN right?)");
                }
                let is_stream = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                if !is_stream {
                    bail!("{url} did not answer with an event stream");
                }
                Ok(response)
            }
        });
        let responses = futures_util::future::join_all(opening).await;
        let mut clients = Vec::with_capacity(n);
        for response in responses {
            let response = response?;
            clients.push(tokio::spawn(read(
                response,
                received.clone(),
                measuring.clone(),
                since.clone(),
                stopped.clone(),
            )));
        }
        Ok(Listeners {
            clients,
            received,
            measuring,
            since,
            stop,
            url,
        })
    }

    /// The measured phase begins: from now, events are counted and timed.
    pub fn start(&self) {
        self.since
            .store(now_unix_us().max(0) as u64, Ordering::Release);
        self.measuring.store(true, Ordering::Release);
    }

    /// The measured phase is over: waits for the events still on their way (until none came
    /// for a while), then closes the streams and returns what each client saw.
    pub async fn finish(self) -> Vec<ClientTally> {
        self.measuring.store(false, Ordering::Release);
        let began = Instant::now();
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while began.elapsed() < DRAIN_AT_MOST && quiet_since.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        let _ = self.stop.send(true);
        let mut tallies = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            tallies.push(client.await.unwrap_or_else(|e| ClientTally {
                disconnected: Some(format!("the reader failed: {e}")),
                ..ClientTally::default()
            }));
        }
        tallies
    }
}

/// One client's reading loop, until `stop` (or the stream ends: a disconnection).
async fn read(
    response: reqwest::Response,
    received: Arc<AtomicU64>,
    measuring: Arc<AtomicBool>,
    since: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut parser = Parser::default();
    let mut body = response.bytes_stream();
    loop {
        let chunk = tokio::select! {
            _ = stop.changed() => return tally,
            chunk = body.next() => chunk,
        };
        let chunk = match chunk {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                // With its causes: "error decoding response body" alone says little.
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                tally.disconnected = Some(why);
                return tally;
            }
            None => {
                tally.disconnected = Some("the server ended the stream".into());
                return tally;
            }
        };
        let arrived_us = now_unix_us();
        let in_phase = measuring.load(Ordering::Acquire);
        let since_us = since.load(Ordering::Acquire).min(i64::MAX as u64) as i64;
        let before = tally.received;
        parser.feed(&chunk, |frame| {
            tally.received += 1;
            let Some(at_us) = created_at_us(&frame.data) else {
                tally.malformed += 1;
                return;
            };
            if at_us < since_us {
                return;
            }
            if in_phase {
                tally.in_phase += 1;
            }
            if frame.event == b"call.started" {
                tally.call_started += 1;
            }
            tally
                .latencies_us
                .push(arrived_us.saturating_sub(at_us).max(0) as u64);
        });
        received.fetch_add(tally.received - before, Ordering::Relaxed);
    }
}

fn ms(us: Option<u64>) -> Value {
    us.map_or(Value::Null, |v| json!(v as f64 / 1000.0))
}

/// The report's `sse` object: delivery over every client, over the measured phase of
/// `elapsed`, against `webhooks` answered 2xx (each a new call: one `call.started` per client).
pub fn report(url: &str, tallies: Vec<ClientTally>, elapsed: Duration, webhooks: u64) -> Value {
    let clients = tallies.len() as u64;
    let in_phase: u64 = tallies.iter().map(|t| t.in_phase).sum();
    let call_started: u64 = tallies.iter().map(|t| t.call_started).sum();
    let malformed: u64 = tallies.iter().map(|t| t.malformed).sum();
    let mut reasons: Vec<String> = tallies
        .iter()
        .filter_map(|t| t.disconnected.clone())
        .collect();
    let disconnected = reasons.len() as u64;
    reasons.sort();
    reasons.dedup();
    reasons.truncate(3);
    let latencies =
        Latencies::from_unsorted(tallies.into_iter().flat_map(|t| t.latencies_us).collect());
    let secs = elapsed.as_secs_f64();
    let expected = webhooks * clients;
    json!({
        "url": url,
        "clients": clients,
        "disconnected": disconnected,
        "disconnect_reasons": reasons,
        // Received during the measured phase, by every client together.
        "events": in_phase,
        "events_per_s": if secs > 0.0 { json!(in_phase as f64 / secs) } else { Value::Null },
        // Created from the phase's start on and received before the streams closed.
        "timed": latencies.len(),
        "malformed": malformed,
        "call_started": call_started,
        "call_started_expected": expected,
        "call_started_delivered_pct": if expected > 0 { json!(call_started as f64 * 100.0 / expected as f64) } else { Value::Null },
        "latency_ms": {
            "p50": ms(latencies.percentile(50.0)),
            "p99": ms(latencies.percentile(99.0)),
            "max": ms(latencies.max()),
            "mean": latencies.mean().map_or(Value::Null, |m| json!(m / 1000.0)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame `feed` completes, as text.
    fn frames(p: &mut Parser, chunk: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        p.feed(chunk, |f| {
            out.push((
                String::from_utf8(f.event.to_vec()).unwrap(),
                String::from_utf8(f.data.into_owned()).unwrap(),
            ))
        });
        out
    }

    #[test]
    fn frames_split_across_chunks_and_comments_are_skipped() {
        let mut p = Parser::default();
        assert!(frames(&mut p, b"retry: 2000\n: hotline\n\n").is_empty());
        assert!(frames(&mut p, b"event: call.started\nid: 1-0\nda").is_empty());
        assert!(frames(&mut p, b"ta: {\"a\":1}\n").is_empty());
        let got = frames(&mut p, b"\n: keep-alive\n\nevent: x\ndata: 1\ndata:2\n\n");
        assert_eq!(
            got,
            vec![
                ("call.started".into(), "{\"a\":1}".into()),
                ("x".into(), "1\n2".into()),
            ]
        );
        assert!(p.buffer.is_empty());
        // Byte by byte, the same.
        let text = b"event: a\ndata: b\n\nevent: c\ndata: d\n\n";
        let mut p = Parser::default();
        let mut got = Vec::new();
        for b in text {
            got.extend(frames(&mut p, &[*b]));
        }
        assert_eq!(
            got,
            vec![("a".into(), "b".into()), ("c".into(), "d".into())]
        );
    }

    #[test]
    fn crlf_lines_parse_too() {
        let mut p = Parser::default();
        let got = frames(&mut p, b"event: a\r\ndata: b\r\n\n");
        assert_eq!(got, vec![("a".into(), "b".into())]);
    }

    #[test]
    fn the_report_sums_clients_and_counts_disconnections() {
        let tallies = vec![
            ClientTally {
                received: 3,
                in_phase: 2,
                call_started: 2,
                latencies_us: vec![1_000, 3_000],
                ..ClientTally::default()
            },
            ClientTally {
                received: 1,
                in_phase: 1,
                call_started: 1,
                latencies_us: vec![2_000],
                disconnected: Some("the server ended the stream".into()),
                ..ClientTally::default()
            },
        ];
        let r = report("http://b/api/events", tallies, Duration::from_secs(1), 2);
        assert_eq!(r["clients"], 2);
        assert_eq!(r["events"], 3);
        assert_eq!(r["events_per_s"], json!(3.0));
        assert_eq!(r["disconnected"], 1);
        assert_eq!(r["call_started_expected"], 4);
        assert_eq!(r["call_started_delivered_pct"], json!(75.0));
        assert_eq!(r["latency_ms"]["p50"], json!(2.0));
        assert_eq!(r["latency_ms"]["p99"], json!(3.0));
    }

    #[test]
    fn the_creation_time_is_the_events_own() {
        // As hotline serialises an event, in its public form.
        let mut event = crate::calls::Event::new(
            "call.started",
            Some("CA1"),
            "a",
            json!({"started_at": "2020-01-01T00:00:00Z", "state": {"at": "2021-01-01T00:00:00Z"}}),
        );
        event.id = "1-0".into();
        let text = serde_json::to_vec(&event.public()).unwrap();
        assert_eq!(created_at_us(&text), Some(event.at.timestamp_micros()));
        // Laid out otherwise: parsed whole.
        let odd = br#"{"data":{"at":"2020-01-01T00:00:00Z"},"at":"2025-01-02T03:04:05.123456Z"}"#;
        assert_eq!(created_at_us(odd).map(|us| us % 1_000_000), Some(123_456));
        assert_eq!(created_at_us(b"not json"), None);
    }
}
