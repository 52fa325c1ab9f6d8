//! The demo gateway as a child process: started through cargo, found through the first
//! line it prints, stopped with SIGTERM.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the gateway may take to print its address (cargo may first wait for the
/// shared build directory's lock while someone else builds).
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The cargo arguments that build the gateway, before `--` and its own flags.
pub(crate) const PACKAGE: [&str; 5] = [
    "--release",
    "-p",
    "health-ai-examples",
    "--example",
    "gateway",
];

/// A running gateway. Dropping it kills the process, so that no error path leaves one
/// behind.
#[derive(Debug)]
pub(crate) struct Gateway {
    child: Child,
    log: PathBuf,
    /// `http://ADDR`, without a trailing slash.
    pub(crate) base_url: String,
}

/// The base URL in the gateway's first line, `listening on http://ADDR`.
pub(crate) fn parse_listening(line: &str) -> Option<String> {
    let url = line.trim().strip_prefix("listening on ")?.trim();
    let addr = url.strip_prefix("http://")?.trim_end_matches('/');
    (!addr.is_empty() && !addr.contains(char::is_whitespace)).then(|| format!("http://{addr}"))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        format!("(nothing in {})", log.display())
    } else {
        format!("last lines of {}:\n{tail}", log.display())
    }
}

impl Gateway {
    /// Starts `cargo run` of the gateway in `root` with these flags, its stderr (the
    /// logs) going to `log`, and waits for its address.
    pub(crate) fn start(root: &Path, flags: &[String], log: &Path) -> Result<Self, String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let stderr =
            File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut command = Command::new(&cargo);
        command
            .current_dir(root)
            .args(["run", "--quiet"])
            .args(PACKAGE)
            .arg("--")
            .args(flags)
            // Plain logs in the log file, whatever the gateway's colour default.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        eprintln!(
            "\n$ cargo run --quiet {} -- {}",
            PACKAGE.join(" "),
            flags.join(" ")
        );
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not run {cargo}: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            return Err("the gateway's stdout was not captured".to_owned());
        };
        let mut gateway = Self {
            child,
            log: log.to_owned(),
            base_url: String::new(),
        };
        let (first_line, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines_read = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines_read.next() {
                let _ = first_line.send(line);
            }
            // Keep draining, so that the gateway never blocks on a full pipe.
            for _ in lines_read {}
        });
        match lines.recv_timeout(START_TIMEOUT) {
            Ok(line) => match parse_listening(&line) {
                Some(url) => {
                    gateway.base_url = url;
                    Ok(gateway)
                }
                None => Err(format!(
                    "the gateway's first line should be `listening on http://ADDR`, not `{line}`"
                )),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the gateway printed no address within {} s; {}",
                START_TIMEOUT.as_secs(),
                log_tail(log)
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = gateway
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                Err(format!(
                    "the gateway exited ({status}) before it listened; {}",
                    log_tail(log)
                ))
            }
        }
    }

    /// Stops the gateway: SIGTERM, a few seconds to finish, then a kill.
    pub(crate) fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!(
                "the gateway had already exited ({status}); {}",
                log_tail(&self.log)
            ));
        }
        #[cfg(unix)]
        {
            // `cargo run` replaces itself with the gateway on Unix: this pid is the gateway.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "xtask: the gateway did not stop within {} s of SIGTERM; killing it",
                STOP_TIMEOUT.as_secs()
            );
        }
        self.kill();
        Ok(())
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_gives_the_address() {
        assert_eq!(
            parse_listening("listening on http://127.0.0.1:41234\n").as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(
            parse_listening("listening on http://[::1]:80/").as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(parse_listening("listening on 127.0.0.1:1"), None);
        assert_eq!(parse_listening("starting up"), None);
        assert_eq!(parse_listening("listening on http://"), None);
    }
}
