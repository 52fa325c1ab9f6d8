//! `cargo xtask demo -- --instances N [flags]`: N demo gateways on consecutive ports, as
//! a team would run them behind a load balancer, in front of one provider.
//!
//! Gateway `i` listens on the `--listen` port plus `i` (3000, 3001, ... by default).
//! Unless `--upstream` names a provider, the first gateway's simulated provider is the
//! provider of all of them: it listens on a free loopback port (`--sim-listen`) and the
//! others call it (`--upstream`), so that the provider's counts (`/api/simulator` of
//! the first gateway) are the whole deployment's. With `--redis URL` they share the
//! per-user limit, the global pace and the cached answers; without it each limits and
//! caches on its own. Every other flag goes to every gateway, `--instances N` included
//! (each then knows its share of the quota for when Redis is unreachable).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::Duration;

/// The cargo arguments that select the gateway.
const PACKAGE: [&str; 4] = ["-p", "health-ai-examples", "--example", "gateway"];

/// N gateways and their flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instances {
    /// The flags of each gateway, in port order.
    pub(crate) gateways: Vec<Vec<String>>,
    /// Whether `--redis` was given.
    pub(crate) shared: bool,
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`, and `args` without it.
fn take_flag(args: &[String], name: &str) -> Result<(Option<String>, Vec<String>), String> {
    let mut value = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    let with_equals = format!("{name}=");
    while let Some(arg) = iter.next() {
        if arg == name {
            let Some(v) = iter.next() else {
                return Err(format!("{name} needs a value"));
            };
            value = Some(v.clone());
        } else if let Some(v) = arg.strip_prefix(&with_equals) {
            value = Some(v.to_owned());
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((value, rest))
}

fn has_flag(args: &[String], name: &str) -> bool {
    let with_equals = format!("{name}=");
    args.iter()
        .any(|a| a == name || a.starts_with(&with_equals))
}

impl Instances {
    /// The plan for `args`, or `None` for one gateway (no `--instances`, or 1): then the
    /// demo runs as it always did.
    pub(crate) fn from_args(args: &[String]) -> Result<Option<Self>, String> {
        Self::plan(args, free_port)
    }

    fn plan(
        args: &[String],
        free_port: impl FnOnce() -> Result<u16, String>,
    ) -> Result<Option<Self>, String> {
        let (count, _) = take_flag(args, "--instances")?;
        let Some(count) = count else {
            return Ok(None);
        };
        let count: u16 = count
            .parse()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| format!("--instances must be 1 to 64, not {count}"))?;
        if count == 1 {
            return Ok(None);
        }
        let (listen, rest) = take_flag(args, "--listen")?;
        let listen: SocketAddr = listen
            .as_deref()
            .unwrap_or("127.0.0.1:3000")
            .parse()
            .map_err(|e| format!("--listen: {e}"))?;
        if listen.port() == 0 || listen.port().checked_add(count - 1).is_none() {
            return Err(format!(
                "--listen {listen}: {count} gateways need {count} consecutive ports from a fixed one"
            ));
        }
        let (sim_listen, rest) = take_flag(&rest, "--sim-listen")?;
        let provider = if has_flag(&rest, "--upstream") || has_flag(&rest, "--sim-chaos") {
            None
        } else {
            Some(match sim_listen {
                Some(addr) => addr,
                None => format!("127.0.0.1:{}", free_port()?),
            })
        };
        let gateways = (0..count)
            .map(|i| {
                let mut flags = vec![
                    "--listen".to_owned(),
                    SocketAddr::new(listen.ip(), listen.port() + i).to_string(),
                ];
                if let Some(provider) = &provider {
                    if i == 0 {
                        flags.extend(["--sim-listen".to_owned(), provider.clone()]);
                    } else {
                        flags.extend(["--upstream".to_owned(), format!("http://{provider}")]);
                    }
                }
                flags.extend(rest.iter().cloned());
                flags
            })
            .collect();
        Ok(Some(Self {
            gateways,
            shared: has_flag(args, "--redis"),
        }))
    }
}

/// A free loopback port, for the shared simulated provider.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Builds the gateway once, starts every instance, and runs until one of them exits
/// (Ctrl-C stops them all: they share the terminal's process group); then stops the
/// others.
pub(crate) fn instances(plan: &Instances) -> Result<(), String> {
    let mut build = vec!["build", "--release", "--locked"];
    build.extend(PACKAGE);
    crate::cargo(&build, &[])?;
    if !plan.shared {
        eprintln!(
            "xtask: note: without --redis each gateway limits and caches on its own \
             (a user gets the per-user limit once per gateway)"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut children: Vec<Child> = Vec::with_capacity(plan.gateways.len());
    for flags in &plan.gateways {
        eprintln!(
            "\n$ cargo run --release --locked --quiet {} -- {}",
            PACKAGE.join(" "),
            flags.join(" ")
        );
        let child = Command::new(&cargo)
            .args(["run", "--release", "--locked", "--quiet"])
            .args(PACKAGE)
            .arg("--")
            .args(flags)
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(format!("could not run {cargo}: {e}"));
            }
        }
    }
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                stop(&mut children);
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("gateway {} exited ({status})", i + 1))
                };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the gateways still running (SIGTERM lets them finish their requests).
fn stop(children: &mut [Child]) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            #[cfg(unix)]
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            #[cfg(not(unix))]
            let _ = child.kill();
        }
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn plan(line: &str) -> Result<Option<Instances>, String> {
        Instances::plan(&args(line), || Ok(4242))
    }

    #[test]
    fn one_gateway_runs_as_before() {
        assert_eq!(plan("--redis redis://127.0.0.1:6379"), Ok(None));
        assert_eq!(plan("--instances 1 --per-user-rps 2"), Ok(None));
    }

    #[test]
    fn instances_get_consecutive_ports_and_one_provider() {
        let plan = plan("--instances 3 --redis redis://127.0.0.1:6379 --per-user-rps 2")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("three gateways"));
        assert!(plan.shared);
        let lines: Vec<String> = plan.gateways.iter().map(|g| g.join(" ")).collect();
        let rest = "--instances 3 --redis redis://127.0.0.1:6379 --per-user-rps 2";
        assert_eq!(
            lines,
            [
                format!("--listen 127.0.0.1:3000 --sim-listen 127.0.0.1:4242 {rest}"),
                format!("--listen 127.0.0.1:3001 --upstream http://127.0.0.1:4242 {rest}"),
                format!("--listen 127.0.0.1:3002 --upstream http://127.0.0.1:4242 {rest}"),
            ]
        );
    }

    #[test]
    fn a_given_listen_address_and_upstream_are_kept() {
        let plan = plan("--listen=0.0.0.0:8000 --instances=2 --upstream http://ai:80")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("two gateways"));
        assert!(!plan.shared);
        let lines: Vec<String> = plan.gateways.iter().map(|g| g.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "--listen 0.0.0.0:8000 --instances=2 --upstream http://ai:80",
                "--listen 0.0.0.0:8001 --instances=2 --upstream http://ai:80",
            ]
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(plan("--instances 0").is_err());
        assert!(plan("--instances lots").is_err());
        assert!(plan("--instances 3 --listen 127.0.0.1:0").is_err());
        assert!(plan("--instances 3 --listen 127.0.0.1:65535").is_err());
        assert!(plan("--instances").is_err());
    }
}
