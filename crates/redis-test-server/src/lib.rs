//! A `redis-server` of a test's own, for the suite's Redis tests and benches
//! (tower-token-bucket's and tower-lru-cache's): a free port, a temporary directory, no
//! persistence, killed when dropped. Not published.
//!
//! ```no_run
//! use redis_test_server::RedisServer;
//!
//! // `None` (with a note) when redis-server is missing, unless HEALTH_AI_REQUIRE_REDIS=1.
//! if let Some(mut server) = RedisServer::start() {
//!     assert!(server.command("PING").starts_with("+PONG"));
//!     let _url = server.url();
//!     server.restart();
//! }
//! ```

#![allow(clippy::missing_panics_doc)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// With `HEALTH_AI_REQUIRE_REDIS=1` (CI), a missing `redis-server` fails the test.
const REQUIRE: &str = "HEALTH_AI_REQUIRE_REDIS";

/// A running `redis-server`; killed, and its directory removed, on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server, or `None` (with a note on stderr) when `redis-server` is not
    /// installed and `HEALTH_AI_REQUIRE_REDIS` is not `1`.
    ///
    /// # Panics
    ///
    /// When the server does not start, or is missing and required.
    pub fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var(REQUIRE).as_deref() != Ok("1"),
                "redis-server is not installed and {REQUIRE}=1 (apt-get install redis-server)"
            );
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            let _ = std::io::stderr().write_all(
                b"note: redis-server is not installed; skipping a test that needs it \
                  (set HEALTH_AI_REQUIRE_REDIS=1 to fail instead)\n",
            );
            return None;
        }
        // A free port can be taken by someone else before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("health-ai-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temporary directory");
            let mut server = Self {
                child: None,
                port,
                dir,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (kept across [`stop`](Self::stop) and
    /// [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart: {e}");
        }
    }

    /// Sends one command (inline form) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let mut reply = Vec::new();
        let mut buf = [0u8; 16384];
        // Bulk replies (INFO) may come in pieces: read until the reply is complete.
        loop {
            let n = stream.read(&mut buf).expect("read");
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// How many clients subscribe to `channel` now (`PUBSUB NUMSUB`). A cache instance
    /// clears its L1 and stores nothing of a call in flight when its invalidation
    /// subscription comes up: a test that expects an answer written to Redis waits for
    /// the subscriptions first.
    #[must_use]
    pub fn subscribers(&self, channel: &str) -> u64 {
        self.command(&format!("PUBSUB NUMSUB {channel}"))
            .lines()
            .find_map(|line| line.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `calls` of `command` from `INFO commandstats` (0 when it never ran).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.command("INFO commandstats");
        let needle = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("no answer to PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Whether `reply` is one whole RESP reply (a simple line, or a bulk string).
fn complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    len < 0 || reply.len() >= end + 2 + usize::try_from(len).unwrap_or(0) + 2
}
