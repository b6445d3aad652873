//! Infrastructure a test can break: its own `redis-server` on a free port (killed and started
//! again), a TCP proxy in front of Postgres that can cut every connection, and the shared Redis
//! under a key prefix of the test's own.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// The shared test Redis (`HOTLINE_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("HOTLINE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("hotline-test-{}", Uuid::new_v4().simple())
}

/// Flags for an instance on the shared Redis under `prefix`.
pub fn redis_flags(url: &str, prefix: &str) -> Vec<String> {
    vec![
        "--redis-url".into(),
        url.into(),
        "--redis-key-prefix".into(),
        prefix.into(),
    ]
}

/// A connection of the test's own to a Redis server, to look at what the app stored there.
pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers")
}

/// One field of a Redis hash, if it is there.
pub async fn redis_hget(url: &str, key: &str, field: &str) -> Option<String> {
    let mut conn = redis_conn(url).await;
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut conn)
        .await
        .expect("HGET")
}

/// Whether a Redis key exists.
pub async fn redis_exists(url: &str, key: &str) -> bool {
    let mut conn = redis_conn(url).await;
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    n == 1
}

/// Polls `check` until it returns true or `within` passes; returns whether it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` of the test's own, on a free port. It saves nothing by itself, but a
/// `SAVE` writes its data to its own directory, and a restart loads it from there again (as a
/// managed Redis with persistence does).
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// Started with more `redis-server` arguments (e.g. `--replicaof 127.0.0.1 PORT`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("redis dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart().await;
        server
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let up = eventually(Duration::from_secs(10), || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(up, "redis-server did not start on port {}", self.port);
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy that can cut every connection through it and refuse new ones, then let them
/// through again: a database or cache that "goes down" without touching the real server. It
/// can also stall the connections open through it (they stay open and forward nothing, as a
/// half-open connection does), and send new connections elsewhere (a failover).
pub struct TcpProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    target: Arc<Mutex<SocketAddr>>,
    conns: Conns,
    accept: tokio::task::JoinHandle<()>,
}

/// The connections through a proxy: each one's forwarding task and its stall switch.
type Conns = Arc<Mutex<Vec<(tokio::task::AbortHandle, Arc<AtomicBool>)>>>;

/// Forwards bytes one way until either side closes; while `stalled`, holds them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let target = Arc::new(Mutex::new(target));
        let conns: Conns = Arc::default();
        let (o, c, t) = (open.clone(), conns.clone(), target.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let to = *t.lock().expect("lock");
                let stalled = Arc::new(AtomicBool::new(false));
                let flag = stalled.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        tokio::join!(pump(ir, ow, flag.clone()), pump(or, iw, flag));
                    }
                });
                c.lock().expect("lock").push((task.abort_handle(), stalled));
            }
        });
        TcpProxy {
            addr,
            open,
            target,
            conns,
            accept,
        }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for (conn, _) in self.conns.lock().expect("lock").drain(..) {
            conn.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// The connections open now stop forwarding, without closing; new ones work.
    pub fn stall(&self) {
        for (_, stalled) in self.conns.lock().expect("lock").iter() {
            stalled.store(true, Ordering::SeqCst);
        }
    }

    /// New connections go to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().expect("lock") = target;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
